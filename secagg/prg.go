package secagg

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Domain-separation labels for every key this package derives.
const (
	labelPairMask = "opencluster secagg v1 pairwise mask"
	labelSelfMask = "opencluster secagg v1 self mask"
	labelShareKey = "opencluster secagg v1 share encryption"
	labelXKey     = "opencluster secagg v1 x25519 from scalar"
	labelGraph    = "opencluster secagg v1 neighbour graph"
	labelPosition = "opencluster secagg v1 random-k positions"
)

// stream returns an AES-256-CTR keystream whose key is HKDF-SHA256 of
// secret with the given label and context (info). The IV is zero: each
// derived key is used for exactly one stream.
func stream(secret []byte, label string, info []byte) (cipher.Stream, error) {
	key, err := hkdf.Key(sha256.New, secret, []byte(label), string(info), 32)
	if err != nil {
		return nil, fmt.Errorf("secagg: hkdf: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secagg: aes: %w", err)
	}
	return cipher.NewCTR(block, make([]byte, aes.BlockSize)), nil
}

// addMask adds sign·PRG(secret, label, info) to v in Z_2^bits, one 32-bit
// keystream word per element masked to bits (uniform, since 2^bits divides
// 2^32).
func addMask(v []uint32, bits uint, sign int, secret []byte, label string, info []byte) error {
	s, err := stream(secret, label, info)
	if err != nil {
		return err
	}
	mask := ringMask(bits)
	buf := make([]byte, 4096)
	for off := 0; off < len(v); {
		n := min(len(v)-off, len(buf)/4)
		b := buf[:4*n]
		clear(b)
		s.XORKeyStream(b, b)
		for i := range n {
			w := binary.LittleEndian.Uint32(b[4*i:])
			if sign > 0 {
				v[off+i] = (v[off+i] + w) & mask
			} else {
				v[off+i] = (v[off+i] - w) & mask
			}
		}
		off += n
	}
	return nil
}

func ringMask(bits uint) uint32 {
	if bits >= 32 {
		return ^uint32(0)
	}
	return 1<<bits - 1
}

// seededRand is a deterministic generator for public choices made from the
// round seed (the neighbour graph, the random-k positions): AES-CTR keyed
// from the seed, so anyone can recompute it and nobody can bias it without
// choosing the seed.
type seededRand struct {
	s   cipher.Stream
	buf [8]byte
}

func newSeededRand(seed uint64, label string) *seededRand {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	s, err := stream(b[:], label, nil)
	if err != nil {
		panic(err) // fixed-size key and label: cannot fail
	}
	return &seededRand{s: s}
}

func (r *seededRand) uint64() uint64 {
	clear(r.buf[:])
	r.s.XORKeyStream(r.buf[:], r.buf[:])
	return binary.LittleEndian.Uint64(r.buf[:])
}

// below returns a uniform integer in [0, n) by rejection (no modulo bias).
func (r *seededRand) below(n uint64) uint64 {
	limit := ^uint64(0) - (^uint64(0) % n)
	for {
		if x := r.uint64(); x < limit {
			return x % n
		}
	}
}
