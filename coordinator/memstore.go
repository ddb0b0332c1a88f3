package coordinator

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// MemStore is a Store that keeps everything in memory: for the simulator
// (sim/) and tests, where a database on disk would only add fsyncs. It
// behaves like the SQL stores (the same test suite runs on it); nothing
// survives the process. Keep bounds memory for long simulations: with
// Keep > 0, AddUpdate forgets the update records (not the nonces) of
// rounds more than Keep rounds older than the newest round created.
type MemStore struct {
	// Keep is how many recent rounds' update records are kept (0: all).
	Keep uint64

	mu      sync.Mutex
	workers map[string]Worker
	keys    map[string]string // public key bytes -> worker id
	rounds  map[uint64]Round
	latest  uint64
	blobs   map[string]Blob
	updates map[uint64][]UpdateRecord // by Applied round, in arrival order
	nonces  map[string]struct{}
	// accepted holds, per header round, the workers with an accepted update.
	accepted map[uint64]map[string]bool
	// sent holds the workers with any update recorded (they are never pruned).
	sent     map[string]bool
	counters map[string]float64
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore {
	return &MemStore{workers: map[string]Worker{}, keys: map[string]string{}, rounds: map[uint64]Round{}, blobs: map[string]Blob{},
		updates: map[uint64][]UpdateRecord{}, nonces: map[string]struct{}{}, accepted: map[uint64]map[string]bool{}, sent: map[string]bool{}}
}

func (s *MemStore) RegisterWorker(_ context.Context, w Worker) (Worker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if got, ok := s.workers[w.ID]; ok {
		return got, nil
	}
	if other, ok := s.keys[string(w.PublicKey)]; ok { // unique, as in the SQL schema
		return Worker{}, fmt.Errorf("coordinator: register worker %q: public key already registered to %q", w.ID, other)
	}
	w.PublicKey, w.Contributed = slices.Clone(w.PublicKey), 0
	s.workers[w.ID] = w
	s.keys[string(w.PublicKey)] = w.ID
	return w, nil
}

func (s *MemStore) Worker(_ context.Context, id string) (Worker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.workers[id]
	if !ok {
		return Worker{}, fmt.Errorf("coordinator: worker %q: %w", id, ErrNotFound)
	}
	return w, nil
}

func (s *MemStore) TouchWorker(_ context.Context, id string, t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.workers[id]; ok && w.LastSeen.Before(t) {
		w.LastSeen = t
		s.workers[id] = w
	}
	return nil
}

func (s *MemStore) Workers(_ context.Context, since time.Time) ([]Worker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Worker
	for _, w := range s.workers {
		if !w.LastSeen.Before(since) {
			out = append(out, w)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (s *MemStore) WorkerIDs(ctx context.Context, since time.Time) ([]string, error) {
	ws, _ := s.Workers(ctx, since)
	ids := make([]string, len(ws))
	for i, w := range ws {
		ids[i] = w.ID
	}
	return ids, nil
}

func (s *MemStore) PruneWorkers(_ context.Context, seenBefore time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, w := range s.workers {
		if w.LastSeen.Before(seenBefore) && w.Contributed == 0 && !s.sent[id] {
			delete(s.workers, id)
			delete(s.keys, string(w.PublicKey))
			n++
		}
	}
	return n, nil
}

func (s *MemStore) SaveCounters(_ context.Context, vals map[string]float64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counters == nil {
		s.counters = map[string]float64{}
	}
	for k, v := range vals {
		s.counters[k] = v
	}
	return nil
}

func (s *MemStore) Counters(context.Context) (map[string]float64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]float64{}
	for k, v := range s.counters {
		out[k] = v
	}
	return out, nil
}

func (s *MemStore) CountWorkers(context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.workers), nil
}

func (s *MemStore) CreateRound(_ context.Context, r Round) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rounds[r.ID]; ok {
		return fmt.Errorf("coordinator: create round %d: it exists", r.ID)
	}
	s.rounds[r.ID] = cloneRound(r)
	s.latest = max(s.latest, r.ID)
	return nil
}

func (s *MemStore) UpdateRound(_ context.Context, r Round) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rounds[r.ID]; !ok {
		return fmt.Errorf("coordinator: update round %d: %w", r.ID, ErrNotFound)
	}
	s.rounds[r.ID] = cloneRound(r)
	return nil
}

func (s *MemStore) Round(_ context.Context, id uint64) (Round, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rounds[id]
	if !ok {
		return Round{}, fmt.Errorf("coordinator: round %d: %w", id, ErrNotFound)
	}
	return cloneRound(r), nil
}

func (s *MemStore) LatestRound(ctx context.Context) (Round, error) {
	s.mu.Lock()
	latest, n := s.latest, len(s.rounds)
	s.mu.Unlock()
	if n == 0 {
		return Round{}, fmt.Errorf("coordinator: latest round: %w", ErrNotFound)
	}
	return s.Round(ctx, latest)
}

// cloneRound copies the cohort so callers cannot alias the stored round.
func cloneRound(r Round) Round {
	r.Cohort = slices.Clone(r.Cohort)
	return r
}

func (s *MemStore) PutBlob(_ context.Context, b Blob) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.blobs[b.SHA256]; !ok {
		s.blobs[b.SHA256] = b
	}
	return nil
}

func (s *MemStore) Blob(_ context.Context, sha string) (Blob, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[sha]
	if !ok {
		return Blob{}, fmt.Errorf("coordinator: blob %s: %w", sha, ErrNotFound)
	}
	return b, nil
}

func (s *MemStore) AddUpdate(_ context.Context, u UpdateRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	wrap := func(err error) error {
		return fmt.Errorf("coordinator: add update %s from worker %q for round %d: %w", u.SHA256, u.WorkerID, u.Round, err)
	}
	if _, ok := s.nonces[u.Nonce]; ok {
		return wrap(ErrReplay)
	}
	if u.Accepted && s.accepted[u.Round][u.WorkerID] {
		return wrap(ErrDuplicate)
	}
	s.nonces[u.Nonce] = struct{}{}
	s.updates[u.Applied] = append(s.updates[u.Applied], u)
	s.sent[u.WorkerID] = true
	if w, ok := s.workers[u.WorkerID]; ok && u.Accepted {
		w.Contributed++
		s.workers[u.WorkerID] = w
	}
	if u.Accepted {
		if s.accepted[u.Round] == nil {
			s.accepted[u.Round] = map[string]bool{}
		}
		s.accepted[u.Round][u.WorkerID] = true
	}
	if s.Keep > 0 && s.latest > s.Keep {
		for r := range s.updates {
			if r < s.latest-s.Keep {
				delete(s.updates, r)
			}
		}
		for r := range s.accepted {
			if r < s.latest-s.Keep {
				delete(s.accepted, r)
			}
		}
	}
	return nil
}

func (s *MemStore) Updates(_ context.Context, round uint64) ([]UpdateRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.updates[round]), nil
}

func (s *MemStore) NonceSeen(_ context.Context, nonce string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.nonces[nonce]
	return ok, nil
}

// SchemaVersion reports the SQL schema version this store mirrors.
func (s *MemStore) SchemaVersion(context.Context) (int, error) { return len(migrations), nil }

func (s *MemStore) Close() error { return nil }
