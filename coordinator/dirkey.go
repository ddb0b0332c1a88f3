package coordinator

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/opencluster/opencluster/protocol"
)

// The coordinator's signing key in its directory: the private key (0600)
// and its public half (0644), which verifiers without access to the
// private key read to pin the key that must sign the ledger.
const (
	KeyFile       = "coordinator.key"
	PublicKeyFile = "coordinator.pub"
)

// WritePublicKey keeps DIR/coordinator.pub equal to key's public half.
func WritePublicKey(dir string, key ed25519.PrivateKey) error {
	pub := key.Public().(ed25519.PublicKey)
	path := filepath.Join(dir, PublicKeyFile)
	if have, err := protocol.LoadPublicKey(path); err == nil && have.Equal(pub) {
		return nil
	}
	return protocol.SavePublicKey(path, pub)
}

// DirPublicKey returns the coordinator key ("ed25519:<base64>") of the
// coordinator directory dir: DIR/coordinator.pub, else the public half of
// DIR/coordinator.key. When both exist they must agree.
func DirPublicKey(dir string) (string, error) {
	pubPath, keyPath := filepath.Join(dir, PublicKeyFile), filepath.Join(dir, KeyFile)
	pub, perr := protocol.LoadPublicKey(pubPath)
	priv, kerr := protocol.LoadPrivateKey(keyPath)
	switch {
	case perr == nil && kerr == nil && !pub.Equal(priv.Public().(ed25519.PublicKey)):
		return "", fmt.Errorf("coordinator: %s and %s hold different keys", pubPath, keyPath)
	case perr == nil:
		return protocol.EncodePublicKey(pub), nil
	case kerr == nil:
		return protocol.EncodePublicKey(priv.Public().(ed25519.PublicKey)), nil
	case errors.Is(perr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist):
		return "", fmt.Errorf("coordinator: %s has neither %s nor %s: give the key with --coordinator-key", dir, PublicKeyFile, KeyFile)
	}
	return "", fmt.Errorf("coordinator: the key of %s: %w", dir, errors.Join(perr, kerr))
}
