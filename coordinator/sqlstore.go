package coordinator

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" driver (pure Go)
)

// sqlStore is the Store over database/sql. Queries are written with '?'
// placeholders and rebound to $n for PostgreSQL; the schema uses only
// types both engines share (TEXT, BIGINT, DOUBLE PRECISION), times are
// Unix nanoseconds, booleans 0/1, 64-bit seeds their int64 bit pattern.
type sqlStore struct {
	db       *sql.DB
	postgres bool
}

// migrations are applied in order, each once, recorded in
// schema_migrations. Never edit one that shipped: append a new one.
var migrations = []string{
	// 1: the initial schema.
	`CREATE TABLE workers (
		id TEXT PRIMARY KEY,
		public_key TEXT NOT NULL UNIQUE,
		name TEXT NOT NULL,
		device TEXT NOT NULL,
		registered BIGINT NOT NULL,
		last_seen BIGINT NOT NULL
	);
	CREATE INDEX workers_last_seen ON workers (last_seen);
	CREATE TABLE rounds (
		id BIGINT PRIMARY KEY,
		state TEXT NOT NULL,
		seed BIGINT NOT NULL,
		cohort TEXT NOT NULL,
		opened BIGINT NOT NULL,
		started BIGINT NOT NULL,
		deadline BIGINT NOT NULL,
		closed BIGINT NOT NULL,
		base_adapter TEXT NOT NULL,
		new_adapter TEXT NOT NULL,
		base_model TEXT NOT NULL,
		opt_state TEXT NOT NULL,
		extensions BIGINT NOT NULL,
		note TEXT NOT NULL
	);
	CREATE TABLE blobs (
		sha256 TEXT PRIMARY KEY,
		kind TEXT NOT NULL,
		size BIGINT NOT NULL,
		created BIGINT NOT NULL
	);
	CREATE TABLE nonces (
		nonce TEXT PRIMARY KEY,
		worker_id TEXT NOT NULL,
		round BIGINT NOT NULL,
		seen BIGINT NOT NULL
	);
	CREATE TABLE updates (
		seq BIGINT NOT NULL,
		round BIGINT NOT NULL,
		applied BIGINT NOT NULL,
		worker_id TEXT NOT NULL REFERENCES workers (id),
		sha256 TEXT NOT NULL,
		nonce TEXT NOT NULL,
		bytes BIGINT NOT NULL,
		tokens BIGINT NOT NULL,
		flops DOUBLE PRECISION NOT NULL,
		energy_wh DOUBLE PRECISION NOT NULL,
		weight DOUBLE PRECISION NOT NULL,
		norm DOUBLE PRECISION NOT NULL,
		late BIGINT NOT NULL,
		accepted BIGINT NOT NULL,
		reason TEXT NOT NULL,
		received BIGINT NOT NULL,
		signature TEXT NOT NULL,
		PRIMARY KEY (nonce)
	);
	CREATE UNIQUE INDEX updates_one_per_worker ON updates (round, worker_id) WHERE accepted = 1;
	CREATE INDEX updates_applied ON updates (applied, seq)`,
	// 2: how many accepted updates each worker has sent (cohort picks cap
	// the workers that have none), and an index for pruning them.
	`ALTER TABLE workers ADD COLUMN contributed BIGINT NOT NULL DEFAULT 0;
	UPDATE workers SET contributed = (SELECT COUNT(*) FROM updates WHERE updates.worker_id = workers.id AND updates.accepted = 1);
	CREATE INDEX updates_worker ON updates (worker_id)`,
	// 3: the metrics' counters, saved so a restart continues them.
	`CREATE TABLE counters (
		name TEXT PRIMARY KEY,
		value DOUBLE PRECISION NOT NULL
	)`,
}

// OpenSQLite opens (creating if needed) the SQLite database at path in WAL
// mode with a busy timeout, and applies pending migrations.
func OpenSQLite(ctx context.Context, path string) (Store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("coordinator: sqlite %s: %w", path, err)
	}
	dsn := "file:" + abs + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("coordinator: sqlite %s: %w", path, err)
	}
	// One connection: SQLite serialises writers anyway, and a single
	// connection never sees SQLITE_BUSY from itself.
	db.SetMaxOpenConns(1)
	s := &sqlStore{db: db}
	if err := s.quickCheck(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("coordinator: sqlite %s: %w", path, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("coordinator: sqlite %s: %w", path, err)
	}
	return s, nil
}

// quickCheck runs PRAGMA quick_check: SQLite reads a damaged page only
// when a query touches it, and some damage (a page's free space, its cell
// offsets) lets queries go on returning rows. Checking every page at
// start-up turns that into a refusal to start that names the damage.
func (s *sqlStore) quickCheck(ctx context.Context) error {
	rows, err := s.db.QueryContext(ctx, `PRAGMA quick_check(8)`)
	if err != nil {
		return fmt.Errorf("integrity check: %w (the database file is damaged: restore it from a backup)", err)
	}
	defer rows.Close()
	var report []string
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return fmt.Errorf("integrity check: %w", err)
		}
		report = append(report, line)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("integrity check: %w (the database file is damaged: restore it from a backup)", err)
	}
	if len(report) != 1 || report[0] != "ok" {
		return fmt.Errorf("integrity check (PRAGMA quick_check) failed: %s; the database file is damaged: restore it from a backup", strings.ReplaceAll(strings.Join(report, "; "), "\n", " "))
	}
	return nil
}

// OpenPostgres connects to PostgreSQL with a pgx DSN (URL or key=value
// form) and applies pending migrations.
func OpenPostgres(ctx context.Context, dsn string) (Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("coordinator: postgres: %w", err)
	}
	db.SetMaxOpenConns(16)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("coordinator: postgres: %w", err)
	}
	s := &sqlStore{db: db, postgres: true}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("coordinator: postgres: %w", err)
	}
	return s, nil
}

// q rebinds '?' placeholders to $1, $2, ... for PostgreSQL.
func (s *sqlStore) q(query string) string {
	if !s.postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *sqlStore) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for i, m := range migrations {
		version := i + 1
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if s.postgres {
				// Serialise concurrent migrators on one database.
				if _, err := tx.ExecContext(ctx, `LOCK TABLE schema_migrations IN EXCLUSIVE MODE`); err != nil {
					return err
				}
			}
			var n int
			if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			for _, stmt := range strings.Split(m, ";") {
				if strings.TrimSpace(stmt) == "" {
					continue
				}
				if _, err := tx.ExecContext(ctx, stmt); err != nil {
					return err
				}
			}
			_, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`), version, time.Now().UnixNano())
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", version, err)
		}
	}
	return nil
}

func (s *sqlStore) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func (s *sqlStore) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("coordinator: schema version: %w", err)
	}
	return int(v.Int64), nil
}

func (s *sqlStore) Close() error { return s.db.Close() }

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// ---- workers

const workerCols = `id, public_key, name, device, registered, last_seen, contributed`

func scanWorker(row interface{ Scan(...any) error }) (Worker, error) {
	var w Worker
	var key string
	var reg, seen int64
	if err := row.Scan(&w.ID, &key, &w.Name, &w.Device, &reg, &seen, &w.Contributed); err != nil {
		return Worker{}, err
	}
	pub, err := parseKey(key)
	if err != nil {
		return Worker{}, fmt.Errorf("worker %q: stored key: %w", w.ID, err)
	}
	w.PublicKey, w.Registered, w.LastSeen = pub, fromNanos(reg), fromNanos(seen)
	return w, nil
}

func (s *sqlStore) RegisterWorker(ctx context.Context, w Worker) (Worker, error) {
	var out Worker
	err := s.tx(ctx, func(tx *sql.Tx) error {
		got, err := scanWorker(tx.QueryRowContext(ctx, s.q(`SELECT `+workerCols+` FROM workers WHERE id = ?`), w.ID))
		if err == nil {
			out = got
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx, s.q(`INSERT INTO workers (`+workerCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`),
			w.ID, encodeKey(w.PublicKey), w.Name, w.Device, nanos(w.Registered), nanos(w.LastSeen), 0)
		out = w
		out.Contributed = 0
		return err
	})
	if err != nil {
		return Worker{}, fmt.Errorf("coordinator: register worker %q: %w", w.ID, err)
	}
	return out, nil
}

func (s *sqlStore) Worker(ctx context.Context, id string) (Worker, error) {
	w, err := scanWorker(s.db.QueryRowContext(ctx, s.q(`SELECT `+workerCols+` FROM workers WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Worker{}, fmt.Errorf("coordinator: worker %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Worker{}, fmt.Errorf("coordinator: worker %q: %w", id, err)
	}
	return w, nil
}

func (s *sqlStore) TouchWorker(ctx context.Context, id string, t time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE workers SET last_seen = ? WHERE id = ? AND last_seen < ?`), nanos(t), id, nanos(t))
	if err != nil {
		return fmt.Errorf("coordinator: touch worker %q: %w", id, err)
	}
	_ = res
	return nil
}

func (s *sqlStore) Workers(ctx context.Context, since time.Time) ([]Worker, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+workerCols+` FROM workers WHERE last_seen >= ? ORDER BY id`), nanos(since))
	if err != nil {
		return nil, fmt.Errorf("coordinator: list workers: %w", err)
	}
	defer rows.Close()
	var out []Worker
	for rows.Next() {
		w, err := scanWorker(rows)
		if err != nil {
			return nil, fmt.Errorf("coordinator: list workers: %w", err)
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

func (s *sqlStore) WorkerIDs(ctx context.Context, since time.Time) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id FROM workers WHERE last_seen >= ? ORDER BY id`), nanos(since))
	if err != nil {
		return nil, fmt.Errorf("coordinator: list worker ids: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("coordinator: list worker ids: %w", err)
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func (s *sqlStore) PruneWorkers(ctx context.Context, seenBefore time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM workers WHERE last_seen < ? AND contributed = 0
		AND NOT EXISTS (SELECT 1 FROM updates WHERE updates.worker_id = workers.id)`), nanos(seenBefore))
	if err != nil {
		return 0, fmt.Errorf("coordinator: prune workers: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

func (s *sqlStore) CountWorkers(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM workers`).Scan(&n); err != nil {
		return 0, fmt.Errorf("coordinator: count workers: %w", err)
	}
	return n, nil
}

// ---- counters

func (s *sqlStore) SaveCounters(ctx context.Context, vals map[string]float64) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for name, v := range vals {
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`), name, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("coordinator: save counters: %w", err)
	}
	return nil
}

func (s *sqlStore) Counters(ctx context.Context) (map[string]float64, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, value FROM counters`)
	if err != nil {
		return nil, fmt.Errorf("coordinator: counters: %w", err)
	}
	defer rows.Close()
	out := map[string]float64{}
	for rows.Next() {
		var name string
		var v float64
		if err := rows.Scan(&name, &v); err != nil {
			return nil, fmt.Errorf("coordinator: counters: %w", err)
		}
		out[name] = v
	}
	return out, rows.Err()
}

// ---- rounds

const roundCols = `id, state, seed, cohort, opened, started, deadline, closed, base_adapter, new_adapter, base_model, opt_state, extensions, note`

func roundArgs(r Round) ([]any, error) {
	cohort, err := json.Marshal(r.Cohort)
	if err != nil {
		return nil, err
	}
	if r.Cohort == nil {
		cohort = []byte("[]")
	}
	return []any{int64(r.ID), string(r.State), int64(r.Seed), string(cohort), nanos(r.Opened), nanos(r.Started),
		nanos(r.Deadline), nanos(r.Closed), r.BaseAdapter, r.NewAdapter, r.BaseModel, r.OptState, int64(r.Extensions), r.Note}, nil
}

func scanRound(row interface{ Scan(...any) error }) (Round, error) {
	var r Round
	var id, seed, opened, started, deadline, closed, ext int64
	var state, cohort string
	if err := row.Scan(&id, &state, &seed, &cohort, &opened, &started, &deadline, &closed, &r.BaseAdapter, &r.NewAdapter, &r.BaseModel, &r.OptState, &ext, &r.Note); err != nil {
		return Round{}, err
	}
	if err := json.Unmarshal([]byte(cohort), &r.Cohort); err != nil {
		return Round{}, fmt.Errorf("round %d: stored cohort: %w", id, err)
	}
	r.ID, r.State, r.Seed, r.Extensions = uint64(id), RoundState(state), uint64(seed), int(ext)
	r.Opened, r.Started, r.Deadline, r.Closed = fromNanos(opened), fromNanos(started), fromNanos(deadline), fromNanos(closed)
	return r, nil
}

func (s *sqlStore) CreateRound(ctx context.Context, r Round) error {
	args, err := roundArgs(r)
	if err == nil {
		_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO rounds (`+roundCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`), args...)
	}
	if err != nil {
		return fmt.Errorf("coordinator: create round %d: %w", r.ID, err)
	}
	return nil
}

func (s *sqlStore) UpdateRound(ctx context.Context, r Round) error {
	args, err := roundArgs(r)
	if err != nil {
		return fmt.Errorf("coordinator: update round %d: %w", r.ID, err)
	}
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE rounds SET state = ?, seed = ?, cohort = ?, opened = ?, started = ?, deadline = ?, closed = ?,
		base_adapter = ?, new_adapter = ?, base_model = ?, opt_state = ?, extensions = ?, note = ? WHERE id = ?`), append(args[1:], args[0])...)
	if err != nil {
		return fmt.Errorf("coordinator: update round %d: %w", r.ID, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("coordinator: update round %d: %w", r.ID, ErrNotFound)
	}
	return nil
}

func (s *sqlStore) Round(ctx context.Context, id uint64) (Round, error) {
	r, err := scanRound(s.db.QueryRowContext(ctx, s.q(`SELECT `+roundCols+` FROM rounds WHERE id = ?`), int64(id)))
	if errors.Is(err, sql.ErrNoRows) {
		return Round{}, fmt.Errorf("coordinator: round %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Round{}, fmt.Errorf("coordinator: round %d: %w", id, err)
	}
	return r, nil
}

func (s *sqlStore) LatestRound(ctx context.Context) (Round, error) {
	r, err := scanRound(s.db.QueryRowContext(ctx, `SELECT `+roundCols+` FROM rounds ORDER BY id DESC LIMIT 1`))
	if errors.Is(err, sql.ErrNoRows) {
		return Round{}, fmt.Errorf("coordinator: latest round: %w", ErrNotFound)
	}
	if err != nil {
		return Round{}, fmt.Errorf("coordinator: latest round: %w", err)
	}
	return r, nil
}

// ---- blobs

func (s *sqlStore) PutBlob(ctx context.Context, b Blob) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO blobs (sha256, kind, size, created) VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING`),
		b.SHA256, b.Kind, b.Size, nanos(b.Created))
	if err != nil {
		return fmt.Errorf("coordinator: put blob %s: %w", b.SHA256, err)
	}
	return nil
}

func (s *sqlStore) Blob(ctx context.Context, sha string) (Blob, error) {
	var b Blob
	var created int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT sha256, kind, size, created FROM blobs WHERE sha256 = ?`), sha).Scan(&b.SHA256, &b.Kind, &b.Size, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return Blob{}, fmt.Errorf("coordinator: blob %s: %w", sha, ErrNotFound)
	}
	if err != nil {
		return Blob{}, fmt.Errorf("coordinator: blob %s: %w", sha, err)
	}
	b.Created = fromNanos(created)
	return b, nil
}

// ---- updates and nonces

const updateCols = `round, applied, worker_id, sha256, nonce, bytes, tokens, flops, energy_wh, weight, norm, late, accepted, reason, received, signature`

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func (s *sqlStore) AddUpdate(ctx context.Context, u UpdateRecord) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM nonces WHERE nonce = ?`), u.Nonce).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return ErrReplay
		}
		if u.Accepted {
			if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM updates WHERE round = ? AND worker_id = ? AND accepted = 1`), int64(u.Round), u.WorkerID).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return ErrDuplicate
			}
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO nonces (nonce, worker_id, round, seen) VALUES (?, ?, ?, ?)`), u.Nonce, u.WorkerID, int64(u.Round), nanos(u.Received)); err != nil {
			return err
		}
		var seq int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) + 1 FROM updates`).Scan(&seq); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO updates (seq, `+updateCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			seq, int64(u.Round), int64(u.Applied), u.WorkerID, u.SHA256, u.Nonce, u.Bytes, int64(u.Tokens), u.FLOPs, u.EnergyWh,
			u.Weight, u.Norm, b2i(u.Late), b2i(u.Accepted), u.Reason, nanos(u.Received), u.Signature)
		if err == nil && u.Accepted {
			_, err = tx.ExecContext(ctx, s.q(`UPDATE workers SET contributed = contributed + 1 WHERE id = ?`), u.WorkerID)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("coordinator: add update %s from worker %q for round %d: %w", u.SHA256, u.WorkerID, u.Round, err)
	}
	return nil
}

func (s *sqlStore) Updates(ctx context.Context, round uint64) ([]UpdateRecord, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+updateCols+` FROM updates WHERE applied = ? ORDER BY seq`), int64(round))
	if err != nil {
		return nil, fmt.Errorf("coordinator: updates of round %d: %w", round, err)
	}
	defer rows.Close()
	var out []UpdateRecord
	for rows.Next() {
		var u UpdateRecord
		var r, a, tokens, late, acc, recv int64
		if err := rows.Scan(&r, &a, &u.WorkerID, &u.SHA256, &u.Nonce, &u.Bytes, &tokens, &u.FLOPs, &u.EnergyWh, &u.Weight, &u.Norm, &late, &acc, &u.Reason, &recv, &u.Signature); err != nil {
			return nil, fmt.Errorf("coordinator: updates of round %d: %w", round, err)
		}
		u.Round, u.Applied, u.Tokens, u.Late, u.Accepted, u.Received = uint64(r), uint64(a), uint64(tokens), late != 0, acc != 0, fromNanos(recv)
		out = append(out, u)
	}
	return out, rows.Err()
}

func (s *sqlStore) NonceSeen(ctx context.Context, nonce string) (bool, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM nonces WHERE nonce = ?`), nonce).Scan(&n); err != nil {
		return false, fmt.Errorf("coordinator: nonce %s: %w", nonce, err)
	}
	return n > 0, nil
}
