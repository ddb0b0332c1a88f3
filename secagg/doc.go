// Package secagg is secure aggregation for one federated round, after
// SecAgg+ (Bell, Bonawitz, Gascón, Lepoint and Raykova, CCS 2020) over
// SecAgg (Bonawitz et al., CCS 2017), and the differential-privacy pieces
// that go with it (clipping, stochastic quantization into a ring, Skellam
// noise, and an RDP accountant). It is pure: no networking, no files. The
// worker (a Client) and the coordinator (a Server) both call it, and
// `ledger verify` calls Recompute to check a stored round.
//
// A round runs in five stages, every message signed by its sender's
// long-term ed25519 key and bound to the round by the config hash:
//
//  1. Advertise: each client makes two fresh X25519 key pairs, one to
//     encrypt shares (c) and one to agree pairwise masks (s), and sends the
//     public halves.
//  2. Share keys: each client draws a self-mask seed β and Shamir-shares β
//     and its mask secret σ (the scalar the s key is derived from) among
//     its k neighbours in a random graph drawn from the round seed (degree
//     O(log n)); each share is AES-GCM-encrypted to its recipient under a
//     key agreed from the c keys, signed, and routed by the server, which
//     cannot read it.
//  3. Masked input: each client sends y = x + PRG(β) + Σ ±PRG(s_uv) over the
//     neighbours v that shared keys, in Z_2^b, on the round's shared random-k
//     positions only.
//  4. Confirm: given the list of clients whose masked input arrived, each
//     survivor signs (the hash of) that list.
//  5. Unmask: given the survivors' confirmations, each survivor checks that
//     at least MinSurvivors of them signed the same list it was given (so a
//     server cannot show different lists to different clients), then
//     reveals, per neighbour, the share of β (if that neighbour's
//     input arrived) or of σ (if it did not), never both. The server
//     reconstructs each survivor's β and each dropped client's σ from
//     Threshold shares and strips every mask. If any mask cannot be
//     removed, it learns nothing: Finish returns ErrTooFewSurvivors and no
//     sum.
//
// Masks come from HKDF-SHA256 over the secret expanded with AES-256-CTR, a
// cryptographic generator (unlike a 32-bit-seeded Mersenne twister). Shamir
// sharing is cloudflare/circl's, over the Ristretto255 scalar field; the
// secrets are field elements and the X25519 key and AES seeds are derived
// from them with SHA-256, so sharing the scalar shares the key.
package secagg
