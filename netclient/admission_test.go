package netclient

import (
	"context"
	"crypto/ed25519"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/protocol"
)

// The worker's client registers with a real coordinator that asks for a
// join token and a proof of work: without the token it is refused with a
// message naming the fix; with it, the client solves the proof the
// coordinator asks for and is admitted.
func TestRegisterWithJoinTokenAndProofOfWork(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	st, err := coordinator.OpenSQLite(ctx, filepath.Join(dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	led, err := ledger.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	_, key, _ := ed25519.GenerateKey(nil)
	cfg := coordinator.DefaultConfig()
	cfg.Shapes = []protocol.Shape{{Name: "a", Dims: []int{4}}}
	token := "join-token-0123456789"
	c, err := coordinator.New(ctx, cfg, coordinator.Options{Dir: dir, Store: st, Ledger: led, Key: key,
		Admission: coordinator.Admission{JoinTokens: []string{token}, PoWBits: 12}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(coordinator.NewServer(c, coordinator.ServerOptions{}))
	defer srv.Close()
	cl, err := NewClient(srv.URL, srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(nil)
	req := protocol.RegisterRequest{PublicKey: protocol.EncodePublicKey(pub), ClientVersion: "test"}
	if _, err := cl.Register(ctx, req, priv); err == nil || !strings.Contains(err.Error(), "join token") || retryable(err) {
		t.Fatalf("register without the token: %v (retryable %v), want a permanent refusal naming the join token", err, retryable(err))
	}
	req.JoinToken = token
	resp, err := cl.Register(ctx, req, priv)
	if err != nil || resp.WorkerID != "w-"+protocol.KeyID(pub) {
		t.Fatalf("register with the token: %+v %v", resp, err)
	}
}
