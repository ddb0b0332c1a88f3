package secagg

import (
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

// stepTo runs a 6-client round up to the start of stage st and returns
// the server, the clients and their last messages.
func stepTo(t *testing.T, st int) (*Params, *Server, []*Client, [][]byte) {
	t.Helper()
	p, privs := cohort(t, 6, 32, 8, 0)
	srv, _ := NewServer(p)
	cs := make([]*Client, 6)
	msgs := make([][]byte, 6)
	for i := range cs {
		cs[i], _ = NewClient(p, i, privs[i], detReader(uint64(i)))
	}
	in := randomInputs(p, 3)
	for stage := 1; stage < st; stage++ {
		for i, c := range cs {
			var err error
			switch stage {
			case 1:
				msgs[i], err = c.Advertise()
			case 2:
				msgs[i], err = c.ShareKeys(srv.AdvertsFor(i))
			case 3:
				msgs[i], err = c.MaskedInput(srv.SharesFor(i), in[i], Claims{})
			case 4:
				msgs[i], err = c.Confirm(srv.Survivors())
			case 5:
				msgs[i], err = c.Unmask(srv.Confirmations())
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Receive(msgs[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return p, srv, cs, msgs
}

func TestTamperedShareRefused(t *testing.T) {
	_, srv, cs, _ := stepTo(t, 3)
	shares := srv.SharesFor(0)
	shares[0].Ciphertext = slices.Clone(shares[0].Ciphertext)
	shares[0].Ciphertext[5] ^= 1
	_, err := cs[0].MaskedInput(shares, make([]uint32, 32), Claims{})
	if !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), "does not authenticate") {
		t.Fatalf("tampered share: got %v", err)
	}
	// A share addressed to someone else, passed off as for client 1.
	_, err = cs[1].MaskedInput(srv.SharesFor(2)[:1], make([]uint32, 32), Claims{})
	if !errors.Is(err, ErrMessage) {
		t.Fatalf("misrouted share: got %v", err)
	}
}

func TestTamperedRevealRefused(t *testing.T) {
	p, srv, cs, _ := stepTo(t, 5)
	// Client 0 reveals a wrong share (re-signed with its own key, so only
	// the content is wrong): Finish must notice, not return a wrong sum.
	for i, c := range cs {
		m, err := c.Unmask(srv.Confirmations())
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			body := slices.Clone(m[:len(m)-64])
			body[headerSize+4+4+1] ^= 1 // first byte of the first share value
			_, privs := cohort(t, 6, 32, 8, 0)
			m = sign(privs[0], body)
		}
		if err := srv.Receive(m); err != nil {
			// A non-canonical scalar is refused here; otherwise at Finish.
			continue
		}
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	_ = p
	sum, _, err := srv.Finish()
	if err == nil || sum != nil {
		t.Fatalf("altered share: Finish returned a sum and %v", err)
	}
	if !errors.Is(err, ErrMessage) {
		t.Fatalf("altered share: got %v, want ErrMessage", err)
	}
}

func TestReplayedAndForeignMessagesRefused(t *testing.T) {
	p, srv, cs, adverts := stepTo(t, 2)
	// The same advert again, now in stage 2.
	if err := srv.Receive(adverts[0]); !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), "advertise message") {
		t.Fatalf("stage-1 message replayed in stage 2: got %v", err)
	}
	m, err := cs[0].ShareKeys(srv.AdvertsFor(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Receive(m); err != nil {
		t.Fatal(err)
	}
	if err := srv.Receive(m); !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), "replayed") {
		t.Fatalf("duplicate: got %v", err)
	}
	// The client will not run a stage twice.
	if _, err := cs[0].ShareKeys(srv.AdvertsFor(0)); !errors.Is(err, ErrStage) {
		t.Fatalf("second ShareKeys: got %v", err)
	}
	// A message from the same cohort in another round is refused.
	q := *p
	q.Round++
	other, _ := NewServer(&q)
	if err := other.Receive(adverts[1]); !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), "round") {
		t.Fatalf("message from another round: got %v", err)
	}
	// A forged signature: flip one body byte.
	bad := slices.Clone(adverts[2])
	bad[headerSize] ^= 1
	srv2, _ := NewServer(p)
	if err := srv2.Receive(bad); !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("forged advert: got %v", err)
	}
	// A relayed advert twice to a client.
	_, _, cs2, adv2 := stepTo(t, 2)
	var dup [][]byte
	for _, v := range cs2[0].Neighbours() {
		dup = append(dup, adv2[v])
	}
	dup = append(dup, dup[0])
	if _, err := cs2[0].ShareKeys(dup); !errors.Is(err, ErrMessage) {
		t.Fatalf("relayed advert twice: got %v", err)
	}
}

func TestUnmaskRefusesSmallSurvivorSet(t *testing.T) {
	p, srv, cs, _ := stepTo(t, 4)
	few := srv.Survivors()[:p.MinSurvivors-1]
	if !slices.Contains(few, 0) {
		few = append([]int{0}, few[1:]...)
	}
	if _, err := cs[0].Confirm(few); !errors.Is(err, ErrTooFewSurvivors) {
		t.Fatalf("confirm %d survivors: got %v", len(few), err)
	}
}

// A server that shows client 0 a survivor list without client 5 (to get
// client 5's mask key from it) and everyone else the full list is caught:
// the others' signed confirmations are of another list, so client 0
// reveals nothing.
func TestEquivocatingServerCaught(t *testing.T) {
	_, srv, cs, _ := stepTo(t, 4)
	full := srv.Survivors()
	partial := slices.DeleteFunc(slices.Clone(full), func(i int) bool { return i == 5 })
	var confirms [][]byte
	var liar []byte
	for i, c := range cs {
		list := full
		if i == 0 {
			list = partial
		}
		m, err := c.Confirm(list)
		if err != nil {
			t.Fatal(err)
		}
		if i != 0 {
			confirms = append(confirms, m)
		} else {
			liar = m
		}
	}
	_, err := cs[0].Unmask(confirms)
	if !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), "equivocating") {
		t.Fatalf("unmask after equivocation: got %v", err)
	}
	// An honest server refuses a confirmation of a list it did not send.
	if err := srv.Receive(liar); !errors.Is(err, ErrMessage) {
		t.Fatalf("confirmation of another list: got %v", err)
	}
}

// The claims in a masked-input message must be finite and non-negative:
// the client refuses to send others, the server to take them (here a
// client's own key signs a message with a NaN energy claim). A message
// without claims (a worker from before them) is taken with zero claims.
func TestMaskedInputClaims(t *testing.T) {
	p, srv, cs, _ := stepTo(t, 3)
	if _, err := cs[0].MaskedInput(srv.SharesFor(0), make([]uint32, 32), Claims{FLOPs: math.Inf(1)}); !errors.Is(err, ErrParams) {
		t.Fatalf("infinite FLOPs claim: got %v", err)
	}
	_, privs := cohort(t, 6, 32, 8, 0)
	m, err := cs[1].MaskedInput(srv.SharesFor(1), make([]uint32, 32), Claims{Tokens: 7, FLOPs: 2, EnergyWh: 3})
	if err != nil {
		t.Fatal(err)
	}
	body := slices.Clone(m[:len(m)-64])
	binary.LittleEndian.PutUint64(body[headerSize+16:], math.Float64bits(math.NaN()))
	if err := srv.Receive(sign(privs[1], body)); !errors.Is(err, ErrMessage) || !strings.Contains(err.Error(), "energy") {
		t.Fatalf("NaN energy claim: got %v", err)
	}
	if err := srv.Receive(m); err != nil {
		t.Fatal(err)
	}
	if c, ok := srv.Claims(1); !ok || c != (Claims{Tokens: 7, FLOPs: 2, EnergyWh: 3}) {
		t.Fatalf("claims of client 1: %+v %v", c, ok)
	}
	m, err = cs[2].MaskedInput(srv.SharesFor(2), make([]uint32, 32), Claims{Tokens: 9})
	if err != nil {
		t.Fatal(err)
	}
	old := append(slices.Clone(m[:headerSize]), m[headerSize+claimsSize:len(m)-64]...)
	if err := srv.Receive(sign(privs[2], old)); err != nil {
		t.Fatalf("masked input without claims: %v", err)
	}
	if c, ok := srv.Claims(2); !ok || c != (Claims{}) {
		t.Fatalf("claims of a message without them: %+v %v", c, ok)
	}
	if _, ok := srv.Claims(3); ok {
		t.Fatal("claims of a client whose masked input did not arrive")
	}
	_ = p
}
