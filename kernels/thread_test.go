package kernels

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestCtxThreadRunsOnOneOSThread(t *testing.T) {
	var tid int
	th, err := startThread(func() error { tid = syscall.Gettid(); return nil }, func() {})
	if err != nil {
		t.Fatal(err)
	}
	defer th.stop(nil)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := th.do(func() error {
					if got := syscall.Gettid(); got != tid {
						return errors.New("ran on another OS thread")
					}
					return nil
				}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := th.do(func() error { panic("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("a panic came back as %v", err)
	}
	if err := th.do(func() error { return nil }); err != nil {
		t.Errorf("the thread did not survive a panic: %v", err)
	}
}

// TestCtxThreadOpsRacingClose: goroutines hammering the thread while it is
// stopped (twice, concurrently) all return, with nil or errClosed, and no
// op runs after release.
func TestCtxThreadOpsRacingClose(t *testing.T) {
	for round := 0; round < 20; round++ {
		var released atomic.Bool
		var late atomic.Int32
		th, err := startThread(func() error { return nil }, func() { released.Store(true) })
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for g := 0; g < 6; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					err := th.do(func() error {
						if released.Load() {
							late.Add(1)
						}
						return nil
					})
					if errors.Is(err, errClosed) {
						return
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		time.Sleep(time.Millisecond)
		var finals atomic.Int32
		var sw sync.WaitGroup
		for k := 0; k < 2; k++ {
			sw.Add(1)
			go func() {
				defer sw.Done()
				th.stop(func() error { finals.Add(1); return nil })
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); sw.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("an op or a stop racing Close hung")
		}
		if !released.Load() || finals.Load() != 1 || late.Load() != 0 {
			t.Fatalf("released %v, final ran %d times, %d ops after release", released.Load(), finals.Load(), late.Load())
		}
		if err := th.do(func() error { return nil }); !errors.Is(err, errClosed) {
			t.Fatalf("op after stop: %v, want errClosed", err)
		}
	}
}

func TestCtxThreadFailedOpen(t *testing.T) {
	var released bool
	_, err := startThread(func() error { return errors.New("no device") }, func() { released = true })
	if err == nil || err.Error() != "no device" || !released {
		t.Fatalf("err %v released %v", err, released)
	}
}
