package protocol

import (
	"context"
	"crypto/sha256"
	"math/big"
	"strconv"
	"testing"
)

func TestPoWZeroBits(t *testing.T) {
	key := "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	for i := 0; i < 2000; i++ {
		nonce := strconv.Itoa(i)
		h := sha256.Sum256([]byte("opencluster pow v1\n" + key + "\n" + nonce))
		want := 256 - new(big.Int).SetBytes(h[:]).BitLen() // independent count
		if got := PoWZeroBits(key, nonce); got != want {
			t.Fatalf("nonce %s: %d zero bits, want %d", nonce, got, want)
		}
	}
	nonce, err := SolvePoW(context.Background(), key, 10)
	if err != nil || PoWZeroBits(key, nonce) < 10 {
		t.Fatalf("SolvePoW(10): %q %v", nonce, err)
	}
	if _, err := SolvePoW(context.Background(), key, MaxPoWBits+1); err == nil {
		t.Error("SolvePoW agreed to more than MaxPoWBits")
	}
}
