// Package pgtest starts a throwaway PostgreSQL server for tests, from the
// initdb and postgres binaries on PATH: a fresh cluster in a temporary
// directory, listening on a free loopback port and a Unix socket in that
// directory, with durability off (it is thrown away), stopped and deleted
// when the test ends.
//
// initdb refuses to run as root, so under root the server runs as the
// "postgres" user when it exists, else "nobody", via the process
// credentials (no su or sudo needed).
//
// When the binaries are missing the test is skipped with a message, unless
// OPENCLUSTER_REQUIRE_POSTGRES=1, in which case it fails: CI sets it so a
// missing server cannot pass silently.
package pgtest

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver
)

// RequireEnv names the variable that turns a skip into a failure.
const RequireEnv = "OPENCLUSTER_REQUIRE_POSTGRES"

// Server is a running throwaway PostgreSQL.
type Server struct {
	Port   int
	Dir    string // cluster data and the socket live under it
	cmd    *exec.Cmd
	done   chan error
	dbSeq  atomic.Int64
	logBuf *bytes.Buffer
}

// DSN is the connection string for database db on the server.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// NewDatabase creates a fresh, empty database and returns its DSN, so each
// test starts from nothing while sharing one server.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.dbSeq.Add(1))
	db, err := sql.Open("pgx", s.DSN("postgres"))
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	return s.DSN(name)
}

// Start starts a server, or skips tb (see the package doc). The server is
// stopped and its directory removed in tb.Cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := start()
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("pgtest: %v (%s=1 makes this a failure)", err, RequireEnv)
		}
		tb.Skipf("pgtest: skipping PostgreSQL tests: %v (set %s=1 to fail instead)", err, RequireEnv)
	}
	tb.Cleanup(s.Stop)
	return s
}

// unprivileged returns the credential to run the server under when this
// process is root, or nil when it is not.
func unprivileged() (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, -1, -1, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
	}
	return nil, -1, -1, fmt.Errorf("running as root and neither user postgres nor nobody exists to run initdb as")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func start() (*Server, error) {
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		return nil, fmt.Errorf("initdb not on PATH (install PostgreSQL server binaries)")
	}
	postgres, err := exec.LookPath("postgres")
	if err != nil {
		return nil, fmt.Errorf("postgres not on PATH (install PostgreSQL server binaries)")
	}
	cred, uid, gid, err := unprivileged()
	if err != nil {
		return nil, err
	}
	// Not t.TempDir: its parents are 0700 root, which the server user
	// cannot traverse.
	dir, err := os.MkdirTemp("", "opencluster-pgtest-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, fmt.Errorf("chown %s: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	var out bytes.Buffer
	cmd := exec.Command(initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out.String())
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Port: port, Dir: dir, done: make(chan error, 1), logBuf: &bytes.Buffer{}}
		s.cmd = exec.Command(postgres, "-D", data, "-p", strconv.Itoa(port), "-k", dir,
			"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
			"-c", "full_page_writes=off", "-c", "max_connections=200")
		s.cmd.Stdout, s.cmd.Stderr = s.logBuf, s.logBuf
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
		s.cmd.Env = append(os.Environ(), "LC_ALL=C")
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		go func() { s.done <- s.cmd.Wait() }()
		if lastErr = s.waitReady(30 * time.Second); lastErr == nil {
			ok = true
			return s, nil
		}
		s.stopProcess()
	}
	return nil, lastErr
}

func (s *Server) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	db, err := sql.Open("pgx", s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer db.Close()
	for {
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("postgres exited: %v\n%s", err, s.logBuf.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := db.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not ready after %v: %v\n%s", limit, err, s.logBuf.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts the server down (fast mode) and removes its directory.
func (s *Server) Stop() {
	s.stopProcess()
	os.RemoveAll(s.Dir)
}

func (s *Server) stopProcess() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
		s.cmd = nil
	}
}
