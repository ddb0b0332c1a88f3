package netclient

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/opencluster/opencluster/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/protocol"
)

// The state directory holds everything a restarted worker needs:
//
//	worker.key        ed25519 private key (PEM PKCS #8, mode 0600), made on first run
//	state.json        coordinator URL, worker id, last round done, totals
//	cache/<sha256>    base models and adapters, content-addressed (<sha>.part while downloading)
//	bases/<sha256>/   a Hugging Face base folder, its files linked from cache/
//	tokens/           the volunteer's data tokenized with the base's tokenizer
//	ef.state          the error-feedback residual (compress.State), committed after each round
//	pending/          the signed update of the round in flight and its next EF state,
//	                  so a worker killed mid-upload resends the same bytes
const (
	keyFile     = "worker.key"
	stateFile   = "state.json"
	cacheDir    = "cache"
	tokensDir   = "tokens"
	efFile      = "ef.state"
	pendingDir  = "pending"
	pendingBody = "update.ocu"
	pendingEF   = "ef.next"
	pendingMeta = "round.json"
)

// Progress is state.json.
type Progress struct {
	Coordinator   string `json:"coordinator"`
	WorkerID      string `json:"worker_id"`
	KeyID         string `json:"key_id"`
	LastRoundDone uint64 `json:"last_round_done"`
	RoundsDone    int    `json:"rounds_done"`
	BytesUp       int64  `json:"bytes_up"`
	BytesDown     int64  `json:"bytes_down"`
}

// StateDir is a worker's state directory.
type StateDir struct {
	Dir string
	Key ed25519.PrivateKey
	// KeyCreated is true when this run made the key.
	KeyCreated bool
	Progress   Progress
}

// OpenState opens (creating when needed) the state directory dir: it
// loads or makes the key and reads state.json when present.
func OpenState(dir string) (*StateDir, error) {
	if dir == "" {
		return nil, errors.New("netclient: no state directory given")
	}
	if err := os.MkdirAll(filepath.Join(dir, pendingDir), 0o700); err != nil {
		return nil, fmt.Errorf("netclient: state directory %s: %w", dir, err)
	}
	key, created, err := protocol.LoadOrCreateKey(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, err
	}
	s := &StateDir{Dir: dir, Key: key, KeyCreated: created}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("netclient: %w", err)
	default:
		if err := json.Unmarshal(b, &s.Progress); err != nil {
			return nil, fmt.Errorf("netclient: %s: %w", filepath.Join(dir, stateFile), err)
		}
	}
	return s, nil
}

// Public is the worker's public key.
func (s *StateDir) Public() ed25519.PublicKey { return s.Key.Public().(ed25519.PublicKey) }

// Cache is the blob cache inside the state directory.
func (s *StateDir) Cache() *Cache { return &Cache{Dir: filepath.Join(s.Dir, cacheDir)} }

// Save writes state.json atomically.
func (s *StateDir) Save() error {
	b, err := json.MarshalIndent(s.Progress, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(s.Dir, stateFile), append(b, '\n'), 0o600)
}

// LoadEF returns the committed error-feedback state for n elements with
// the given momentum, or a fresh one when none is saved or it does not
// fit (a new model, a changed momentum): the old residual cannot apply.
func (s *StateDir) LoadEF(n int, momentum float32) (*compress.State, error) {
	st, err := compress.LoadState(filepath.Join(s.Dir, efFile))
	if err == nil && st.N() == n && st.Momentum == momentum {
		return st, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// A corrupt file is not fatal: the residual is an optimisation.
		// Start over rather than refusing to work.
		os.Remove(filepath.Join(s.Dir, efFile))
	}
	return compress.NewState(n, momentum)
}

// pendingRound describes the update waiting in pending/.
type pendingRound struct {
	Round         uint64  `json:"round"`
	AdapterSHA256 string  `json:"adapter_sha256"`
	Loss          float64 `json:"loss"`
	Tokens        int64   `json:"tokens"`
	EnergyJ       float64 `json:"energy_j"`
	Measured      bool    `json:"energy_measured"`
	Ratio         float64 `json:"compression_ratio"`
}

// SavePending stores a signed update and the EF state that follows it,
// before the upload starts.
func (s *StateDir) SavePending(p pendingRound, body []byte, ef *compress.State) error {
	dir := filepath.Join(s.Dir, pendingDir)
	// Meta last: its presence says the other two are complete.
	os.Remove(filepath.Join(dir, pendingMeta))
	if err := atomicfile.WriteFile(filepath.Join(dir, pendingBody), body, 0o600); err != nil {
		return err
	}
	if err := ef.Save(filepath.Join(dir, pendingEF)); err != nil {
		return err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, pendingMeta), b, 0o600)
}

// Pending returns the stored update, if a complete one is there.
func (s *StateDir) Pending() (pendingRound, []byte, bool) {
	var p pendingRound
	dir := filepath.Join(s.Dir, pendingDir)
	b, err := os.ReadFile(filepath.Join(dir, pendingMeta))
	if err != nil || json.Unmarshal(b, &p) != nil {
		return p, nil, false
	}
	body, err := os.ReadFile(filepath.Join(dir, pendingBody))
	if err != nil {
		return p, nil, false
	}
	return p, body, true
}

// FinishPending ends the round in flight: when commit is true the EF state
// that follows the update becomes the committed one (the coordinator has
// the update); otherwise it is dropped and the old residual stays. The
// round is recorded as done either way.
func (s *StateDir) FinishPending(round uint64, commit bool) error {
	dir := filepath.Join(s.Dir, pendingDir)
	if commit {
		if err := os.Rename(filepath.Join(dir, pendingEF), filepath.Join(s.Dir, efFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("netclient: commit error-feedback state: %w", err)
		}
		syncDir(s.Dir)
	}
	os.Remove(filepath.Join(dir, pendingMeta))
	os.Remove(filepath.Join(dir, pendingBody))
	os.Remove(filepath.Join(dir, pendingEF))
	if round > s.Progress.LastRoundDone {
		s.Progress.LastRoundDone = round
	}
	s.Progress.RoundsDone++
	return s.Save()
}

// DropPending discards a stored update without marking its round done.
func (s *StateDir) DropPending() {
	dir := filepath.Join(s.Dir, pendingDir)
	for _, f := range []string{pendingMeta, pendingBody, pendingEF} {
		os.Remove(filepath.Join(dir, f))
	}
}
