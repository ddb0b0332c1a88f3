package ledger

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencluster/opencluster/protocol"
)

// VerifyError names the first record that failed verification.
type VerifyError struct {
	// Index is the record's position in the chain (0-based).
	Index int
	// Round is the record's round id, when it could be read.
	Round uint64
	// Line is the 1-based line in the file, or 0 when the records did not
	// come from a file.
	Line int
	// Reason says what is wrong.
	Reason string
	// Err is the underlying error, if any (e.g. protocol.ErrBadSignature).
	Err error

	// unparsed is set when the line could not be read, so Round is unknown.
	unparsed bool
}

func (e *VerifyError) Error() string {
	switch {
	case e.unparsed:
		return fmt.Sprintf("record %d (line %d): %s", e.Index, e.Line, e.Reason)
	case e.Line > 0:
		return fmt.Sprintf("record %d (round %d, line %d): %s", e.Index, e.Round, e.Line, e.Reason)
	default:
		return fmt.Sprintf("record %d (round %d): %s", e.Index, e.Round, e.Reason)
	}
}

func (e *VerifyError) Unwrap() error { return e.Err }

// ErrNotStored is what an UpdateStore returns (wrapped or as
// fs.ErrNotExist) for an update it does not keep; Verify then skips that
// update's signature check.
var ErrNotStored = errors.New("update not stored")

// VerifyOptions adds optional checks to Verify.
type VerifyOptions struct {
	// CoordinatorKey pins the key ("ed25519:<base64>") that must sign every
	// record. Empty means trust the key in record 0 and require the rest of
	// the chain to use the same one.
	CoordinatorKey string
	// Head, when set, is the hash the last record must have; it detects
	// records cut off the end, which a hash chain alone cannot.
	Head string
	// UpdateStore returns the stored bytes of the update with the given
	// hex SHA-256, or an error wrapping ErrNotStored or fs.ErrNotExist when
	// it is not kept. When set, every accepted update that is kept is
	// re-hashed, parsed, checked against its entry and its worker's
	// signature verified.
	UpdateStore func(hash string) ([]byte, error)
	// MaxElems bounds the element count of stored updates (default: the
	// protocol's limit, 2^31-1).
	MaxElems int
	// Recompute, when set, is called for each record after its other
	// checks pass and must return the hex SHA-256 of the adapter that
	// aggregating the record's accepted updates onto AdapterBefore yields;
	// Verify compares it with AdapterAfter. The coordinator provides it.
	// Returning an error wrapping ErrNotStored skips the comparison.
	Recompute func(r Record) (adapterAfter string, err error)
}

// Verify checks a whole chain: each record's fields, its hash, the
// coordinator's signature, the index sequence, the link to the previous
// record (prev_hash, increasing round ids, adapter_before equal to the
// previous adapter_after, one coordinator key), and the optional checks in
// opts. It returns nil or a *VerifyError naming the first bad record.
func Verify(records []Record, opts VerifyOptions) error {
	return verify(records, nil, opts)
}

// verify is Verify with the records' line numbers, when known.
func verify(records []Record, lines []int, opts VerifyOptions) error {
	var pinned ed25519.PublicKey
	if opts.CoordinatorKey != "" {
		k, err := protocol.ParsePublicKey(opts.CoordinatorKey)
		if err != nil {
			return fmt.Errorf("ledger: verify: pinned coordinator key: %w", err)
		}
		pinned = k
	}
	for i := range records {
		r := &records[i]
		fail := func(err error, format string, args ...any) error {
			ve := &VerifyError{Index: i, Round: r.Round, Reason: fmt.Sprintf(format, args...), Err: err}
			if lines != nil {
				ve.Line = lines[i]
			}
			return ve
		}
		if r.Index != uint64(i) {
			return fail(nil, "index %d out of sequence: want %d", r.Index, i)
		}
		if err := checkRecord(r); err != nil {
			return fail(err, "%v", err)
		}
		h, err := r.ComputeHash()
		if err != nil {
			return fail(err, "%v", err)
		}
		if h != r.Hash {
			return fail(nil, "hash mismatch: record says %s, content hashes to %s", r.Hash, h)
		}
		key, _ := protocol.ParsePublicKey(r.CoordinatorKey) // checked by checkRecord
		if pinned != nil && !pinned.Equal(key) {
			return fail(nil, "signed by coordinator key %s, want %s", r.CoordinatorKey, opts.CoordinatorKey)
		}
		sig, err := decodeSignature(r.Signature)
		if err != nil {
			return fail(err, "coordinator signature: %v", err)
		}
		if !ed25519.Verify(key, []byte(SigningPrefix+r.Hash), sig) {
			return fail(nil, "bad coordinator signature for key %s", r.CoordinatorKey)
		}
		if i > 0 {
			if err := checkLink(r, &records[i-1]); err != nil {
				return fail(err, "%v", err)
			}
		}
		if opts.UpdateStore != nil {
			if err := checkStoredUpdates(r, opts); err != nil {
				return fail(err, "%v", err)
			}
		}
		if opts.Recompute != nil {
			after, err := opts.Recompute(r.clone())
			switch {
			case errors.Is(err, ErrNotStored) || errors.Is(err, fs.ErrNotExist):
			case err != nil:
				return fail(err, "recompute aggregate: %v", err)
			case after != r.AdapterAfter:
				return fail(nil, "adapter_after mismatch: record says %s, recomputing the aggregate gives %s", r.AdapterAfter, after)
			}
		}
	}
	if opts.Head != "" {
		head := ""
		if len(records) > 0 {
			head = records[len(records)-1].Hash
		}
		if head != opts.Head {
			ve := &VerifyError{Index: max(len(records)-1, 0), Reason: fmt.Sprintf("head is %q, want %s: records are missing from the end", head, opts.Head)}
			if len(records) > 0 {
				ve.Round = records[len(records)-1].Round
				if lines != nil {
					ve.Line = lines[len(records)-1]
				}
			}
			return ve
		}
	}
	return nil
}

// checkStoredUpdates checks each accepted update of r that the store keeps.
func checkStoredUpdates(r *Record, opts VerifyOptions) error {
	maxElems := opts.MaxElems
	if maxElems <= 0 {
		maxElems = 1<<31 - 1 // compress.MaxN
	}
	for i := range r.Updates {
		e := &r.Updates[i]
		if !e.Accepted {
			continue
		}
		b, err := opts.UpdateStore(e.UpdateHash)
		if errors.Is(err, ErrNotStored) || errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update %s (worker %q): %w", e.UpdateHash, e.WorkerID, err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.UpdateHash {
			return fmt.Errorf("update %s (worker %q): stored bytes hash to %x", e.UpdateHash, e.WorkerID, sum)
		}
		if int64(len(b)) != e.Bytes {
			return fmt.Errorf("update %s (worker %q): entry says %d bytes, stored update has %d", e.UpdateHash, e.WorkerID, e.Bytes, len(b))
		}
		u, err := protocol.UnmarshalUpdate(b, maxElems)
		if err != nil {
			return fmt.Errorf("update %s (worker %q): %w", e.UpdateHash, e.WorkerID, err)
		}
		key, _ := protocol.ParsePublicKey(e.WorkerKey) // checked by checkRecord
		if err := protocol.Verify(u, key); err != nil {
			return fmt.Errorf("update %s (worker %q, key %s): %w", e.UpdateHash, e.WorkerID, e.WorkerKey, err)
		}
		mismatch := func(field string, entry, update any) error {
			return fmt.Errorf("update %s (worker %q): entry's %s %v differs from the signed update's %v", e.UpdateHash, e.WorkerID, field, entry, update)
		}
		switch {
		case u.WorkerID != e.WorkerID:
			return mismatch("worker_id", e.WorkerID, u.WorkerID)
		case u.Round != r.Round:
			return mismatch("round", r.Round, u.Round)
		case u.Tokens != e.Tokens:
			return mismatch("tokens", e.Tokens, u.Tokens)
		case u.FLOPs != e.FLOPs:
			return mismatch("flops", e.FLOPs, u.FLOPs)
		case u.EnergyWh != e.EnergyWh:
			return mismatch("energy_wh", e.EnergyWh, u.EnergyWh)
		case base64.StdEncoding.EncodeToString(u.Signature[:]) != e.Signature:
			return mismatch("signature", e.Signature, base64.StdEncoding.EncodeToString(u.Signature[:]))
		case hex.EncodeToString(u.BaseSHA256[:]) != r.AdapterBefore:
			return mismatch("base adapter (adapter_before)", r.AdapterBefore, hex.EncodeToString(u.BaseSHA256[:]))
		}
	}
	return nil
}

// Parse reads ledger lines from rd. Every line must be a complete record
// in canonical form (byte for byte what MarshalLine writes) ending in
// "\n". It checks the form only; call Verify for hashes and signatures.
// A bad line gives a *VerifyError naming it.
func Parse(rd io.Reader) ([]Record, error) {
	recs, _, err := parse(rd)
	return recs, err
}

// parse is Parse returning each record's line number too.
func parse(rd io.Reader) ([]Record, []int, error) {
	br := bufio.NewReaderSize(rd, 64<<10)
	var recs []Record
	var lines []int
	for n := 1; ; n++ {
		line, err := readLine(br)
		if err == io.EOF && len(line) == 0 {
			return recs, lines, nil
		}
		fail := func(format string, args ...any) ([]Record, []int, error) {
			return recs, lines, &VerifyError{Index: len(recs), Line: n, Reason: fmt.Sprintf(format, args...), unparsed: true}
		}
		switch {
		case errors.Is(err, errLineTooLong):
			return fail("line longer than %d bytes", MaxLineBytes)
		case err == io.EOF:
			return fail("last line has no newline: truncated or torn write")
		case err != nil:
			return recs, lines, fmt.Errorf("ledger: read line %d: %w", n, err)
		}
		r, perr := parseLine(line)
		if perr != nil {
			return fail("%v", perr)
		}
		recs = append(recs, r)
		lines = append(lines, n)
	}
}

var errLineTooLong = errors.New("line too long")

// readLine returns the next line without its "\n". At the end of the input
// it returns what is left and io.EOF.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line)+len(chunk) > MaxLineBytes+1 {
			return nil, errLineTooLong
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, err
		}
	}
}

// parseLine decodes one line and checks it is in canonical form.
func parseLine(line []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("invalid record JSON: %w", err)
	}
	if dec.More() {
		return Record{}, fmt.Errorf("data after the record")
	}
	canon, err := r.MarshalLine()
	if err != nil {
		return Record{}, err
	}
	if !bytes.Equal(canon, line) {
		at := 0
		for at < len(canon) && at < len(line) && canon[at] == line[at] {
			at++
		}
		return Record{}, fmt.Errorf("not in canonical form: differs from the canonical encoding at byte %d", at)
	}
	return r, nil
}

// VerifyReader parses ledger lines from rd and verifies them. It returns
// the records read (all of them on success) and nil or the first error: a
// *VerifyError for a bad line or record.
func VerifyReader(rd io.Reader, opts VerifyOptions) ([]Record, error) {
	recs, lines, err := parse(rd)
	if err != nil {
		return recs, err
	}
	if err := verify(recs, lines, opts); err != nil {
		return recs, err
	}
	return recs, nil
}

// VerifyFile verifies the ledger file at path (a ledger.jsonl).
func VerifyFile(path string, opts VerifyOptions) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	defer f.Close()
	recs, err := VerifyReader(f, opts)
	var ve *VerifyError
	if err != nil && !errors.As(err, &ve) {
		err = fmt.Errorf("ledger %s: %w", path, err)
	}
	return recs, err
}

// DirStore returns an UpdateStore reading update files from dir, named by
// their hex SHA-256: DIR/<hash>, or DIR/<hash>.<ext> for any one extension.
// Updates not found give an error wrapping fs.ErrNotExist.
func DirStore(dir string) func(hash string) ([]byte, error) {
	return func(hash string) ([]byte, error) {
		if !isHash(hash) { // never let a hash become a path outside dir
			return nil, fmt.Errorf("ledger: update store %s: bad hash %q", dir, hash)
		}
		b, err := os.ReadFile(filepath.Join(dir, hash))
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return b, err
		}
		matches, _ := filepath.Glob(filepath.Join(dir, hash+".*"))
		switch len(matches) {
		case 0:
			return nil, err
		case 1:
			return os.ReadFile(matches[0])
		default:
			return nil, fmt.Errorf("ledger: update store %s: %d files for update %s", dir, len(matches), hash)
		}
	}
}
