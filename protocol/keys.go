package protocol

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"io/fs"
	"os"
	"runtime"
	"strings"
)

// Key files are PEM: a private key is a "PRIVATE KEY" block holding PKCS #8
// DER (what `openssl genpkey -algorithm ed25519` writes), mode 0600; a
// public key is a "PUBLIC KEY" block holding PKIX DER, mode 0644.

// GenerateKey returns a new ed25519 key pair from crypto/rand.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("protocol: generate key: %w", err)
	}
	return pub, priv, nil
}

// SavePrivateKey writes priv to path as PEM PKCS #8 with mode 0600,
// atomically (temporary file, fsync, rename), replacing any old file.
func SavePrivateKey(path string, priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("protocol: save key %s: private key has %d bytes, want %d", path, len(priv), ed25519.PrivateKeySize)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return fmt.Errorf("protocol: save key %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// LoadPrivateKey reads a key written by SavePrivateKey. On Unix it refuses
// a file that group or others can read or write, as ssh does.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	if runtime.GOOS != "windows" {
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("protocol: load key: %w", err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("protocol: load key %s: permissions %#o are too open; want 0600 (chmod 600 %s)", path, perm, path)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("protocol: load key: %w", err)
	}
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" || strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("protocol: load key %s: want exactly one PEM \"PRIVATE KEY\" block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("protocol: load key %s: %w", path, err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("protocol: load key %s: %T is not an ed25519 key", path, k)
	}
	return priv, nil
}

// LoadOrCreateKey loads the private key at path, or generates and saves a
// new one when the file does not exist; created says which happened.
func LoadOrCreateKey(path string) (priv ed25519.PrivateKey, created bool, err error) {
	priv, err = LoadPrivateKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return priv, false, err
	}
	_, priv, err = GenerateKey()
	if err != nil {
		return nil, false, err
	}
	if err := SavePrivateKey(path, priv); err != nil {
		return nil, false, err
	}
	return priv, true, nil
}

// SavePublicKey writes pub to path as PEM PKIX with mode 0644, atomically.
func SavePublicKey(path string, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("protocol: save public key %s: %d bytes, want %d", path, len(pub), ed25519.PublicKeySize)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("protocol: save public key %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
}

// LoadPublicKey reads a key written by SavePublicKey.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("protocol: load public key: %w", err)
	}
	block, rest := pem.Decode(b)
	if block == nil || block.Type != "PUBLIC KEY" || strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("protocol: load public key %s: want exactly one PEM \"PUBLIC KEY\" block", path)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("protocol: load public key %s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("protocol: load public key %s: %T is not an ed25519 key", path, k)
	}
	return pub, nil
}

// publicKeyPrefix marks the text form of a public key in the JSON API.
const publicKeyPrefix = "ed25519:"

// EncodePublicKey is the text form used in the JSON API:
// "ed25519:" followed by the 32 key bytes in standard base64.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return publicKeyPrefix + base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey reads the form EncodePublicKey writes.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	rest, ok := strings.CutPrefix(s, publicKeyPrefix)
	if !ok {
		return nil, fmt.Errorf("protocol: public key %q: want the %q prefix", s, publicKeyPrefix)
	}
	b, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("protocol: public key %q: %w", s, err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("protocol: public key %q: %d bytes, want %d", s, len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// KeyID is a short, stable name for a public key: the first 16 hex digits
// of its SHA-256. Logs and the ledger use it.
func KeyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return hex.EncodeToString(h[:8])
}
