package secagg

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/cloudflare/circl/group"
)

// Client is one cohort member's side of a round. Call its methods in
// stage order, each once: Advertise, ShareKeys, MaskedInput, Unmask. A
// repeated or skipped call is refused with ErrStage, so a replayed server
// message cannot make a client reveal more.
type Client struct {
	p     *Params
	hash  [32]byte
	index int
	priv  ed25519.PrivateKey
	rnd   io.Reader
	neigh []int
	stage int

	cKey  *ecdh.PrivateKey // share encryption, never shared
	sigma group.Scalar     // mask-agreement secret; the s key derives from it
	sKey  *ecdh.PrivateKey
	beta  group.Scalar // self-mask seed

	peers map[int]advert  // advertised neighbours
	own   [2]group.Scalar // this client's own [β share, σ share]

	survivors    map[int]bool // the list it confirmed in stage 4
	survivorList []byte       // survivorHash of that list
	// held: shares of neighbours' secrets addressed to this client.
	held map[int][2]group.Scalar // [β share, σ share]
}

// NewClient starts client index of the cohort in p, signing with priv
// (whose public half must be p.Keys[index]) and drawing secrets from rnd
// (crypto/rand.Reader in production).
func NewClient(p *Params, index int, priv ed25519.PrivateKey, rnd io.Reader) (*Client, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if index < 0 || index >= len(p.Keys) {
		return nil, fmt.Errorf("secagg: client index %d outside the cohort of %d: %w", index, len(p.Keys), ErrParams)
	}
	if len(priv) != ed25519.PrivateKeySize || !bytes.Equal(priv.Public().(ed25519.PublicKey), p.Keys[index]) {
		return nil, fmt.Errorf("secagg: client %d: signing key does not match the cohort's key for this index: %w", index, ErrParams)
	}
	g, err := Neighbours(p.Seed, len(p.Keys), p.Degree)
	if err != nil {
		return nil, err
	}
	return &Client{p: p, hash: p.Hash(), index: index, priv: priv, rnd: rnd, neigh: g[index]}, nil
}

// Neighbours returns the cohort indices this client shares with.
func (c *Client) Neighbours() []int { return slices.Clone(c.neigh) }

func (c *Client) advance(to int) error {
	if c.stage != to-1 {
		return fmt.Errorf("secagg: client %d: %s after stage %d: %w", c.index, stageNames[to], c.stage, ErrStage)
	}
	c.stage = to
	return nil
}

// Advertise is stage 1: fresh keys for this round, public halves signed.
func (c *Client) Advertise() ([]byte, error) {
	if err := c.advance(StageAdvertise); err != nil {
		return nil, err
	}
	var err error
	if c.cKey, err = ecdh.X25519().GenerateKey(c.rnd); err != nil {
		return nil, fmt.Errorf("secagg: client %d: key: %w", c.index, err)
	}
	if c.sigma, err = newSecret(c.rnd); err != nil {
		return nil, err
	}
	if c.sKey, err = xKey(c.sigma); err != nil {
		return nil, err
	}
	if c.beta, err = newSecret(c.rnd); err != nil {
		return nil, err
	}
	b := appendHeader(nil, StageAdvertise, c.p, c.hash, c.index)
	b = append(b, c.cKey.PublicKey().Bytes()...)
	b = append(b, c.sKey.PublicKey().Bytes()...)
	commit := betaCommitment(c.beta)
	b = append(b, commit[:]...)
	return sign(c.priv, b), nil
}

func betaCommitment(beta group.Scalar) [32]byte {
	return sha256.Sum256(append([]byte("opencluster secagg v1 beta commitment"), scalarBytes(beta)...))
}

// ShareKeys is stage 2. adverts are the stage-1 messages of this client's
// neighbours, as the server relays them; each must be a neighbour's, for
// this round, correctly signed, and at most one per neighbour. It shares β
// and σ among them and returns the signed message of encrypted shares.
func (c *Client) ShareKeys(adverts [][]byte) ([]byte, error) {
	if err := c.advance(StageShareKeys); err != nil {
		return nil, err
	}
	c.peers = make(map[int]advert, len(adverts))
	for i, m := range adverts {
		h, body, err := openMessage(c.p, c.hash, StageAdvertise, m)
		if err != nil {
			return nil, fmt.Errorf("client %d: relayed advert %d: %w", c.index, i, err)
		}
		if !slices.Contains(c.neigh, h.sender) {
			return nil, fmt.Errorf("secagg: client %d: relayed advert from %d, not a neighbour: %w", c.index, h.sender, ErrMessage)
		}
		if _, dup := c.peers[h.sender]; dup {
			return nil, fmt.Errorf("secagg: client %d: two adverts from %d (replayed): %w", c.index, h.sender, ErrMessage)
		}
		a, err := parseAdvert(body)
		if err != nil {
			return nil, fmt.Errorf("secagg: client %d: advert from %d: %v: %w", c.index, h.sender, err, ErrMessage)
		}
		c.peers[h.sender] = a
	}
	if len(c.peers)+1 < c.p.Threshold {
		return nil, fmt.Errorf("secagg: client %d: %d of %d neighbours advertised; with its own share that is fewer than the threshold %d: %w", c.index, len(c.peers), len(c.neigh), c.p.Threshold, ErrTooFewSurvivors)
	}
	// The holders are the advertised neighbours and the client itself: it
	// keeps one share of each secret, so a survivor's own share counts
	// towards unmasking it (a dropped client's own share is gone with it).
	to := []int{c.index}
	for v := range c.peers {
		to = append(to, v)
	}
	slices.Sort(to)
	betaShares := shareSecret(c.rnd, c.beta, to, c.p.Threshold)
	sigmaShares := shareSecret(c.rnd, c.sigma, to, c.p.Threshold)
	b := appendHeader(nil, StageShareKeys, c.p, c.hash, c.index)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(to)-1))
	for i, v := range to {
		if v == c.index {
			c.own = [2]group.Scalar{betaShares[i].Value, sigmaShares[i].Value}
			continue
		}
		aead, err := c.shareCipher(v)
		if err != nil {
			return nil, err
		}
		plain := append(scalarBytes(betaShares[i].Value), scalarBytes(sigmaShares[i].Value)...)
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
		b = aead.Seal(b, make([]byte, aead.NonceSize()), plain, shareAD(c.hash, c.index, v))
	}
	return sign(c.priv, b), nil
}

// shareCipher is AES-256-GCM under HKDF(X25519(c_self, c_peer)); the key is
// the same for both directions of a pair, and the additional data names
// the direction. Each direction seals one message per round, so a fixed
// nonce is safe.
func (c *Client) shareCipher(peer int) (cipher.AEAD, error) {
	pub, err := ecdh.X25519().NewPublicKey(c.peers[peer].cPub)
	if err != nil {
		return nil, fmt.Errorf("secagg: client %d: neighbour %d's key: %v: %w", c.index, peer, err, ErrMessage)
	}
	secret, err := c.cKey.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("secagg: client %d: agreement with %d: %v: %w", c.index, peer, err, ErrMessage)
	}
	lo, hi := min(c.index, peer), max(c.index, peer)
	info := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, uint32(lo)), uint32(hi))
	info = append(info, c.hash[:]...)
	key, err := hkdf.Key(sha256.New, secret, []byte(labelShareKey), string(info), 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func shareAD(hash [32]byte, from, to int) []byte {
	ad := append([]byte("opencluster secagg v1 share "), hash[:]...)
	ad = binary.LittleEndian.AppendUint32(ad, uint32(from))
	return binary.LittleEndian.AppendUint32(ad, uint32(to))
}

// MaskedInput is stage 3. shares are the encrypted shares addressed to this
// client (from the neighbours that completed stage 2); each is decrypted
// and authenticated now, so a tampered share is refused before anything
// is sent. x is this client's encoded input (Encode), claims what its
// round cost. It returns the signed message: the claims and the masked
// vector.
func (c *Client) MaskedInput(shares []Routed, x []uint32, claims Claims) ([]byte, error) {
	if err := c.advance(StageMasked); err != nil {
		return nil, err
	}
	if len(x) != c.p.Length {
		return nil, fmt.Errorf("secagg: client %d: input of %d values, the round masks %d: %w", c.index, len(x), c.p.Length, ErrParams)
	}
	if err := claims.check(); err != nil {
		return nil, fmt.Errorf("secagg: client %d: %v: %w", c.index, err, ErrParams)
	}
	c.held = make(map[int][2]group.Scalar, len(shares))
	for _, r := range shares {
		if _, ok := c.peers[r.From]; !ok {
			return nil, fmt.Errorf("secagg: client %d: share from %d, which did not advertise to it: %w", c.index, r.From, ErrMessage)
		}
		if _, dup := c.held[r.From]; dup {
			return nil, fmt.Errorf("secagg: client %d: two shares from %d (replayed): %w", c.index, r.From, ErrMessage)
		}
		aead, err := c.shareCipher(r.From)
		if err != nil {
			return nil, err
		}
		plain, err := aead.Open(nil, make([]byte, aead.NonceSize()), r.Ciphertext, shareAD(c.hash, r.From, c.index))
		if err != nil {
			return nil, fmt.Errorf("secagg: client %d: share from %d does not authenticate (tampered or misrouted): %w", c.index, r.From, ErrMessage)
		}
		bs, err1 := parseScalar(plain[:ScalarSize])
		ss, err2 := parseScalar(plain[ScalarSize:])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("secagg: client %d: share from %d holds a bad scalar: %w", c.index, r.From, ErrMessage)
		}
		c.held[r.From] = [2]group.Scalar{bs, ss}
	}
	y := slices.Clone(x)
	if err := addMask(y, c.p.Bits, +1, scalarBytes(c.beta), labelSelfMask, selfInfo(c.hash, c.index)); err != nil {
		return nil, err
	}
	for v := range c.held {
		if err := c.addPairMask(y, v); err != nil {
			return nil, err
		}
	}
	c.held[c.index] = c.own
	b := appendHeader(nil, StageMasked, c.p, c.hash, c.index)
	b = appendClaims(b, claims)
	b = pack(b, y, c.p.Bits)
	return sign(c.priv, b), nil
}

func (c *Client) addPairMask(y []uint32, v int) error {
	pub, err := ecdh.X25519().NewPublicKey(c.peers[v].sPub)
	if err != nil {
		return fmt.Errorf("secagg: client %d: neighbour %d's mask key: %v: %w", c.index, v, err, ErrMessage)
	}
	secret, err := c.sKey.ECDH(pub)
	if err != nil {
		return fmt.Errorf("secagg: client %d: mask agreement with %d: %v: %w", c.index, v, err, ErrMessage)
	}
	sign := +1
	if c.index > v {
		sign = -1
	}
	return addMask(y, c.p.Bits, sign, secret, labelPairMask, pairInfo(c.hash, c.index, v))
}

func selfInfo(hash [32]byte, u int) []byte {
	return binary.LittleEndian.AppendUint32(append([]byte(nil), hash[:]...), uint32(u))
}

func pairInfo(hash [32]byte, u, v int) []byte {
	b := append([]byte(nil), hash[:]...)
	b = binary.LittleEndian.AppendUint32(b, uint32(min(u, v)))
	return binary.LittleEndian.AppendUint32(b, uint32(max(u, v)))
}

// Confirm is stage 4. survivors are the cohort indices whose masked input
// the server received (sorted, including this client). The client checks
// the list, keeps it, and signs its SHA-256: the confirmation that stage 5
// collects.
// It refuses when fewer than MinSurvivors remain, so a server cannot
// unmask a tiny aggregate.
func (c *Client) Confirm(survivors []int) ([]byte, error) {
	if err := c.advance(StageConfirm); err != nil {
		return nil, err
	}
	alive := make(map[int]bool, len(survivors))
	for _, s := range survivors {
		if s < 0 || s >= len(c.p.Keys) || alive[s] {
			return nil, fmt.Errorf("secagg: client %d: survivor list names %d twice or outside the cohort: %w", c.index, s, ErrMessage)
		}
		alive[s] = true
	}
	if !alive[c.index] {
		return nil, fmt.Errorf("secagg: client %d: survivor list leaves this client out: %w", c.index, ErrMessage)
	}
	if len(survivors) < c.p.MinSurvivors {
		return nil, fmt.Errorf("secagg: client %d: %d survivors, fewer than the %d the round requires: %w", c.index, len(survivors), c.p.MinSurvivors, ErrTooFewSurvivors)
	}
	c.survivors = alive
	c.survivorList = survivorHash(survivors)
	b := appendHeader(nil, StageConfirm, c.p, c.hash, c.index)
	b = append(b, c.survivorList...)
	return sign(c.priv, b), nil
}

// Unmask is stage 5. confirms are the survivors' stage-4 messages as the
// server relays them: at least MinSurvivors distinct survivors must have
// signed the same survivor list this client confirmed, or it refuses (a
// server showing different lists to different clients is caught here).
// Then, for each neighbour whose shares it holds, the client reveals the β
// share if that neighbour survived and the σ share if not: never both, and
// only once per round.
func (c *Client) Unmask(confirms [][]byte) ([]byte, error) {
	if err := c.advance(StageUnmask); err != nil {
		return nil, err
	}
	signed := map[int]bool{}
	for i, m := range confirms {
		h, body, err := openMessage(c.p, c.hash, StageConfirm, m)
		if err != nil {
			return nil, fmt.Errorf("client %d: relayed confirmation %d: %w", c.index, i, err)
		}
		if !bytes.Equal(body, c.survivorList) {
			return nil, fmt.Errorf("secagg: client %d: client %d confirmed another survivor list (the server is equivocating): %w", c.index, h.sender, ErrMessage)
		}
		if !c.survivors[h.sender] || signed[h.sender] {
			return nil, fmt.Errorf("secagg: client %d: confirmation from %d, not a survivor or twice: %w", c.index, h.sender, ErrMessage)
		}
		signed[h.sender] = true
	}
	if len(signed) < c.p.MinSurvivors {
		return nil, fmt.Errorf("secagg: client %d: %d survivors confirmed the list, fewer than %d: %w", c.index, len(signed), c.p.MinSurvivors, ErrTooFewSurvivors)
	}
	alive := c.survivors
	from := make([]int, 0, len(c.held))
	for v := range c.held {
		from = append(from, v)
	}
	slices.Sort(from)
	b := appendHeader(nil, StageUnmask, c.p, c.hash, c.index)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(from)))
	for _, v := range from {
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
		if alive[v] {
			b = append(b, kindSelfMask)
			b = append(b, scalarBytes(c.held[v][0])...)
		} else {
			b = append(b, kindMaskKey)
			b = append(b, scalarBytes(c.held[v][1])...)
		}
	}
	return sign(c.priv, b), nil
}
