package secagg

import (
	"crypto/ecdh"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/secretsharing"
)

// The secrets a client shares are scalars of the Ristretto255 group (a
// prime field of about 2^252 elements): the field circl's Shamir sharing
// works in. Keys are derived from them, so reconstructing the scalar
// reconstructs the key.
var field = group.Ristretto255

// ScalarSize is the encoded size of a secret and of a share value.
const ScalarSize = 32

// newSecret draws a uniform field element from rnd.
func newSecret(rnd io.Reader) (group.Scalar, error) {
	var b [64]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return nil, fmt.Errorf("secagg: random secret: %w", err)
	}
	// Hash-to-scalar reduces 64 uniform bytes mod the group order: uniform
	// to within 2^-250.
	return field.HashToScalar(b[:], []byte("opencluster secagg v1 secret")), nil
}

func scalarBytes(s group.Scalar) []byte {
	b, err := s.MarshalBinary()
	if err != nil {
		panic(err) // marshalling a valid scalar cannot fail
	}
	return b
}

func parseScalar(b []byte) (group.Scalar, error) {
	if len(b) != ScalarSize {
		return nil, fmt.Errorf("scalar of %d bytes, want %d", len(b), ScalarSize)
	}
	s := field.NewScalar()
	if err := s.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("non-canonical scalar: %w", err)
	}
	return s, nil
}

// xKey derives the X25519 private key from a secret scalar.
func xKey(s group.Scalar) (*ecdh.PrivateKey, error) {
	h := sha256.Sum256(append([]byte(labelXKey), scalarBytes(s)...))
	return ecdh.X25519().NewPrivateKey(h[:])
}

// shareSecret splits s among the recipients (share ids are their cohort
// indices + 1) so that any threshold of them recover it.
func shareSecret(rnd io.Reader, s group.Scalar, recipients []int, threshold int) []secretsharing.Share {
	ss := secretsharing.New(rnd, uint(threshold-1), s)
	out := make([]secretsharing.Share, len(recipients))
	id := field.NewScalar()
	for i, r := range recipients {
		out[i] = ss.ShareWithID(id.SetUint64(uint64(r + 1)))
	}
	return out
}

// errNotEnoughShares is returned by recoverSecret below the threshold.
var errNotEnoughShares = errors.New("not enough shares")

// recoverSecret rebuilds a secret from the first threshold of the shares,
// given as (holder cohort index, value). It does not check the others:
// every secret it rebuilds is checked against a public commitment instead
// (the self-mask seed's hash, the mask key's public half), which catches an
// altered share among those used at half the cost of a second
// interpolation.
func recoverSecret(holders []int, values []group.Scalar, threshold int) (group.Scalar, error) {
	if len(holders) < threshold {
		return nil, fmt.Errorf("%d of %d shares: %w", len(holders), threshold, errNotEnoughShares)
	}
	shares := make([]secretsharing.Share, threshold)
	for i := range shares {
		shares[i] = secretsharing.Share{ID: field.NewScalar().SetUint64(uint64(holders[i] + 1)), Value: values[i]}
	}
	return secretsharing.Recover(uint(threshold-1), shares)
}
