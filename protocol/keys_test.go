package protocol

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "worker.key")
	priv, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateKey: created=%v err=%v", created, err)
	}
	if runtime.GOOS != "windows" {
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
		}
	}
	again, created, err := LoadOrCreateKey(path)
	if err != nil || created || !priv.Equal(again) {
		t.Fatalf("second LoadOrCreateKey: created=%v err=%v same=%v", created, err, priv.Equal(again))
	}
	pub := priv.Public().(ed25519.PublicKey)
	pubPath := filepath.Join(dir, "worker.pub")
	if err := SavePublicKey(pubPath, pub); err != nil {
		t.Fatal(err)
	}
	gotPub, err := LoadPublicKey(pubPath)
	if err != nil || !pub.Equal(gotPub) {
		t.Fatalf("LoadPublicKey: %v", err)
	}
	// Loading the public file as a private key fails with a clear error.
	os.Chmod(pubPath, 0o600)
	if _, err := LoadPrivateKey(pubPath); err == nil || !strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("LoadPrivateKey(public file) = %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d files in the key directory, want 2 (temp files left?)", len(entries))
	}
}

func TestLoadPrivateKeyRejects(t *testing.T) {
	dir := t.TempDir()
	_, priv, _ := GenerateKey()
	path := filepath.Join(dir, "k")
	if err := SavePrivateKey(path, priv); err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" {
		os.Chmod(path, 0o644)
		if _, err := LoadPrivateKey(path); err == nil || !strings.Contains(err.Error(), "too open") {
			t.Errorf("mode 0644 key: %v, want a permissions error", err)
		}
		os.Chmod(path, 0o600)
	}
	for name, content := range map[string]string{
		"garbage":   "not a key",
		"truncated": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n",
		"empty":     "",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := LoadPrivateKey(p); err == nil {
			t.Errorf("%s: LoadPrivateKey accepted it", name)
		}
	}
	if _, err := LoadPrivateKey(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	if err := SavePrivateKey(path, priv[:10]); err == nil {
		t.Error("short private key saved")
	}
	if err := SavePrivateKey(filepath.Join(dir, "no/such/dir/k"), priv); err == nil {
		t.Error("save into a missing directory succeeded")
	}
}

func TestPublicKeyText(t *testing.T) {
	pub, _, _ := GenerateKey()
	s := EncodePublicKey(pub)
	got, err := ParsePublicKey(s)
	if err != nil || !pub.Equal(got) {
		t.Fatalf("ParsePublicKey(%q) = %v, %v", s, got, err)
	}
	for _, bad := range []string{"", "ed25519:", "ed25519:!!!", "rsa:AAAA", "ed25519:AAAA", s[:len(s)-4]} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted it", bad)
		}
	}
	if id := KeyID(pub); len(id) != 16 || id != KeyID(got) {
		t.Errorf("KeyID = %q", id)
	}
}

func TestAPIJSON(t *testing.T) {
	ri := RoundInfo{Round: 3, Seed: 1<<63 + 1, Recipe: Recipe{Steps: 10, LR: 2e-4, Codec: "topk:0.01+int8:256"}}
	b, err := json.Marshal(ri)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"seed":"9223372036854775809"`) {
		t.Errorf("seed is not a decimal string: %s", b)
	}
	var back RoundInfo
	if err := json.Unmarshal(b, &back); err != nil || back.Seed != ri.Seed || back.Recipe != ri.Recipe {
		t.Errorf("RoundInfo round trip: %+v, %v", back, err)
	}
	e, _ := json.Marshal(ErrorBody{Error: "stale round"})
	if string(e) != `{"error":"stale round"}` {
		t.Errorf("ErrorBody = %s", e)
	}
}
