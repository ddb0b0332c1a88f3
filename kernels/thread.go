package kernels

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
)

// errClosed is what an op on a closed backend gets, instead of waiting for
// a context thread that is gone.
var errClosed = errors.New("the backend is closed")

// ctxThread runs functions on one goroutine locked to its OS thread, as the
// CUDA driver API wants (a context is current on one thread). It is in the
// plain build so its shutdown can be tested without a GPU: an op that races
// Close returns errClosed, it never waits forever.
type ctxThread struct {
	work chan func()
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

// startThread starts the thread, runs open on it and returns open's error.
// release runs on the thread when it stops (also after a failed open).
func startThread(open func() error, release func()) (*ctxThread, error) {
	t := &ctxThread{work: make(chan func()), quit: make(chan struct{}), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(t.done)
		// Never unlocked: the thread, and the context current on it, end
		// with the goroutine.
		runtime.LockOSThread()
		if err := open(); err != nil {
			release()
			errc <- err
			return
		}
		errc <- nil
		for {
			select {
			case f := <-t.work:
				f()
			case <-t.quit:
				release()
				return
			}
		}
	}()
	if err := <-errc; err != nil {
		<-t.done
		return nil, err
	}
	return t, nil
}

// do runs f on the thread and returns its error. A panic inside f comes
// back as an error instead of killing the thread; after stop, do returns
// errClosed without running f.
func (t *ctxThread) do(f func() error) error {
	res := make(chan error, 1)
	job := func() {
		defer func() {
			if r := recover(); r != nil {
				res <- fmt.Errorf("panic on the context thread: %v", r)
			}
		}()
		res <- f()
	}
	select {
	case <-t.quit: // checked first, so nothing is queued after stop began
		return errClosed
	default:
	}
	select {
	case t.work <- job:
		return <-res // the thread runs every job it accepted
	case <-t.quit:
		return errClosed
	}
}

// stop runs final on the thread (to finish queued work), then ends the
// thread, which calls release. It is idempotent and safe to call from
// several goroutines at once; every call returns once the thread is gone,
// and only the first reports final's error.
func (t *ctxThread) stop(final func() error) error {
	var err error
	t.once.Do(func() {
		if final != nil {
			err = t.do(final)
		}
		close(t.quit)
	})
	<-t.done
	return err
}
