package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/opencluster/opencluster/compress"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/secagg"
)

// Test hooks for the fault tests (faults/). Each is switched on by an
// environment variable that names itself a test hook; never set them
// otherwise.

// stallUploadEnv is a test hook for the fault tests (faults/): when set to
// a byte count N, the process's first update upload sends its first N
// bytes (at most all but one) and then hangs, after saying so on stderr,
// so a test can kill the worker (or the coordinator) with part of an
// update on the wire; retries send the whole body. Never set it otherwise.
const stallUploadEnv = "OPENCLUSTER_TEST_STALL_UPLOAD"

// stallUploads wraps hc's transport with the stallUploadEnv hook.
func stallUploads(hc *http.Client, n string) error {
	limit, err := strconv.Atoi(n)
	if err != nil || limit < 0 {
		return fmt.Errorf("%s=%q: want a byte count", stallUploadEnv, n)
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	var stalled atomic.Bool
	hc.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method != http.MethodPost || r.URL.Path != netclient.PathUpdates || r.Body == nil || stalled.Swap(true) {
			return next.RoundTrip(r)
		}
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		k := min(limit, len(body)-1)
		r = r.Clone(r.Context())
		st := &stallBody{ctx: r.Context(), sent: k, all: len(body), closed: make(chan struct{})}
		st.r = io.MultiReader(bytes.NewReader(body[:k]), readerFunc(st.stall))
		r.Body = st
		r.GetBody = nil
		return next.RoundTrip(r)
	})
	return nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// stallBody is the request body the hook sends: the first bytes, then a
// read that blocks until the request ends or the transport closes the
// body (as it does when the connection dies), so the upload fails the
// way a real stall on a dead connection does.
type stallBody struct {
	ctx       context.Context
	sent, all int
	r         io.Reader
	once      sync.Once
	closed    chan struct{}
}

func (s *stallBody) Read(p []byte) (int, error) { return s.r.Read(p) }

func (s *stallBody) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func (s *stallBody) stall([]byte) (int, error) {
	fmt.Fprintf(os.Stderr, "opencluster: test hook: upload stalled after %d of %d bytes\n", s.sent, s.all)
	select {
	case <-s.ctx.Done():
		return 0, s.ctx.Err()
	case <-s.closed:
		return 0, errors.New("test hook: stalled upload body closed")
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// poisonUpdatesEnv is a test hook: when set to a magnitude M (such as
// 1e30), every update the worker uploads is replaced, on its way out, by
// one whose every travelling value is +-M (the sign of the honest value),
// re-encoded with the round's codec and signed with the worker's key: a
// hostile worker for the fault tests, which the coordinator must bound.
const poisonUpdatesEnv = "OPENCLUSTER_TEST_POISON_UPDATES"

// poisonUploads wraps hc's transport with the poisonUpdatesEnv hook.
func poisonUploads(hc *http.Client, v string, key ed25519.PrivateKey) error {
	m, err := strconv.ParseFloat(v, 32)
	if err != nil || m <= 0 || math.IsInf(m, 0) {
		return fmt.Errorf("%s=%q: want a finite magnitude > 0", poisonUpdatesEnv, v)
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	hc.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method != http.MethodPost || r.URL.Path != netclient.PathUpdates || r.Body == nil {
			return next.RoundTrip(r)
		}
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		if bad, err := poisonUpdate(body, float32(m), key); err == nil {
			fmt.Fprintf(os.Stderr, "opencluster: test hook: poisoned an update (values +-%g)\n", m)
			body = bad
		} else {
			fmt.Fprintf(os.Stderr, "opencluster: test hook: could not poison the update: %v\n", err)
		}
		r = r.Clone(r.Context())
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		return next.RoundTrip(r)
	})
	return nil
}

func poisonUpdate(body []byte, m float32, key ed25519.PrivateKey) ([]byte, error) {
	u, err := protocol.UnmarshalUpdate(body, compress.MaxN)
	if err != nil {
		return nil, err
	}
	codec, err := compress.Parse(u.Codec)
	if err != nil {
		return nil, err
	}
	dense := u.Delta.Dense()
	for i, x := range dense {
		switch {
		case x > 0:
			dense[i] = m
		case x < 0:
			dense[i] = -m
		}
	}
	p, err := codec.Encode(dense, nil, u.Seed)
	if err != nil {
		return nil, err
	}
	u.Payload, u.Nonce = p.Bytes, [protocol.NonceSize]byte{}
	return protocol.MarshalUpdate(u, key)
}

// pauseAfterCloseEnv is a test hook for the fault tests (faults/): when set
// to a round id N, the coordinator stops for good right after storing
// round N as closed and before opening round N+1, after saying so on
// stderr, so a test can kill it (SIGKILL) in exactly that window. Never
// set it otherwise.
const pauseAfterCloseEnv = "OPENCLUSTER_TEST_PAUSE_AFTER_CLOSE"

func pauseAfterCloseHook() (func(uint64), error) {
	v, ok := os.LookupEnv(pauseAfterCloseEnv)
	if !ok {
		return nil, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return nil, fmt.Errorf("%s=%q: want a round id", pauseAfterCloseEnv, v)
	}
	return func(round uint64) {
		if round == n {
			fmt.Fprintf(os.Stderr, "opencluster: test hook: paused after closing round %d\n", round)
			select {} // until killed
		}
	}, nil
}

// haltSecureStageEnv is a test hook for the fault tests (faults/): when
// set to a secure-aggregation stage 1..5, the worker stops for good just
// before it would send its first message of that stage, after saying so
// on stderr, so a test can kill it between stages. Never set it otherwise.
const haltSecureStageEnv = "OPENCLUSTER_TEST_HALT_SECURE_STAGE"

func haltSecureStage(hc *http.Client, v string) error {
	stage, err := strconv.Atoi(v)
	if err != nil || stage < 1 || stage > secagg.NumStages {
		return fmt.Errorf("%s=%q: want a stage 1..%d", haltSecureStageEnv, v, secagg.NumStages)
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	path := netclient.PathSecAgg + strconv.Itoa(stage)
	hc.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPost && r.URL.Path == path {
			fmt.Fprintf(os.Stderr, "opencluster: test hook: halted before secure stage %d\n", stage)
			select {} // until killed
		}
		return next.RoundTrip(r)
	})
	return nil
}

// pauseBeforeUnmaskEnv is a test hook for the fault tests (faults/): when
// set to a round id N, the coordinator stops for good once round N's
// unmask stage has closed and before it removes the masks, after saying so
// on stderr, so a test can kill it mid-unmask. Never set it otherwise.
const pauseBeforeUnmaskEnv = "OPENCLUSTER_TEST_PAUSE_BEFORE_UNMASK"

func pauseBeforeUnmaskHook() (func(uint64), error) {
	v, ok := os.LookupEnv(pauseBeforeUnmaskEnv)
	if !ok {
		return nil, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return nil, fmt.Errorf("%s=%q: want a round id", pauseBeforeUnmaskEnv, v)
	}
	return func(round uint64) {
		if round == n {
			fmt.Fprintf(os.Stderr, "opencluster: test hook: paused before unmasking round %d\n", round)
			select {} // until killed
		}
	}, nil
}
