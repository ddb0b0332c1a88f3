package protocol

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/bits"
	"strconv"
)

// Registration proof of work (optional, the coordinator's admission.pow_bits):
// the worker finds a nonce such that SHA-256(PoWPrefix + public key + "\n" +
// nonce) starts with at least the asked number of zero bits, and sends it
// as RegisterRequest.PoWNonce. The key is in the hashed message, so one
// proof cannot serve another key: minting many keys costs work per key.
const (
	PoWPrefix = "opencluster pow v1\n"
	// MaxPoWBits is the most work a worker agrees to do (about 2^28
	// hashes, a few minutes on one core); a coordinator asking for more is
	// refused rather than obeyed.
	MaxPoWBits = 28
	// MaxPoWNonceLen bounds RegisterRequest.PoWNonce.
	MaxPoWNonceLen = 64
)

// PoWZeroBits is the number of leading zero bits of the proof's hash for
// publicKey ("ed25519:<base64>") and nonce.
func PoWZeroBits(publicKey, nonce string) int {
	h := sha256.Sum256([]byte(PoWPrefix + publicKey + "\n" + nonce))
	n := 0
	for _, b := range h {
		if b != 0 {
			return n + bits.LeadingZeros8(b)
		}
		n += 8
	}
	return n
}

// SolvePoW returns the first decimal nonce whose proof has at least
// zeroBits leading zero bits (0 for none), or ctx's error.
func SolvePoW(ctx context.Context, publicKey string, zeroBits int) (string, error) {
	if zeroBits <= 0 {
		return "", nil
	}
	if zeroBits > MaxPoWBits {
		return "", fmt.Errorf("protocol: a proof of work of %d bits is more than the %d this worker does", zeroBits, MaxPoWBits)
	}
	for i := uint64(0); ; i++ {
		if i%(1<<16) == 0 && ctx.Err() != nil {
			return "", ctx.Err()
		}
		nonce := strconv.FormatUint(i, 10)
		if PoWZeroBits(publicKey, nonce) >= zeroBits {
			return nonce, nil
		}
	}
}
