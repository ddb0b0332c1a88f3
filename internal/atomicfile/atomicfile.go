// Package atomicfile writes files so that a crash, a kill -9 or a full disk
// leaves either the old file or the complete new one, never a torn mix.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile writes data to path through a synced temporary file in the same
// directory, then renames it into place and syncs the directory so the
// rename itself survives a crash. On any error the temporary file is removed
// and the previous content of path is untouched.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	p, err := Create(path, perm)
	if err != nil {
		return err
	}
	if _, err := p.Write(data); err != nil {
		p.Abort()
		return err
	}
	return p.Commit()
}

// Pending is a file being written atomically, for content streamed piece by
// piece rather than held in memory whole: Write to it, then Commit puts it
// in place, or Abort throws it away. Until Commit the file at path is
// untouched. A Pending is not safe for concurrent use.
type Pending struct {
	path, tmp string
	f         *os.File
	synced    bool
	err       error // the first write error, reported again by Commit
}

// Create starts writing path: a temporary file beside it, with mode perm.
func Create(path string, perm os.FileMode) (*Pending, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	p := &Pending{path: path, tmp: f.Name(), f: f}
	if err := f.Chmod(perm); err != nil {
		p.Abort()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return p, nil
}

// Path is where the file goes on Commit.
func (p *Pending) Path() string { return p.path }

// Write appends b to the file.
func (p *Pending) Write(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	n, err := p.f.Write(b)
	if err != nil {
		p.err = fmt.Errorf("write %s: %w", p.path, err)
		return n, p.err
	}
	p.synced = false
	return n, nil
}

// Sync flushes what was written to the disk. Commit does it too; calling it
// early lets the flush overlap other work before the commit.
func (p *Pending) Sync() error {
	if p.err != nil {
		return p.err
	}
	if err := p.f.Sync(); err != nil {
		p.err = fmt.Errorf("write %s: %w", p.path, err)
		return p.err
	}
	p.synced = true
	return nil
}

// Commit syncs the file, renames it into place and syncs the directory so
// the rename survives a crash. On an error (a write's included) the
// temporary file is removed and path keeps its old content.
func (p *Pending) Commit() error {
	if p.f == nil {
		return errors.New("atomicfile: commit after commit or abort of " + p.path)
	}
	if !p.synced {
		if err := p.Sync(); err != nil {
			p.Abort()
			return err
		}
	}
	err := p.f.Close()
	p.f = nil
	if err == nil {
		err = os.Rename(p.tmp, p.path)
	}
	if err != nil {
		os.Remove(p.tmp)
		return fmt.Errorf("write %s: %w", p.path, err)
	}
	if d, derr := os.Open(filepath.Dir(p.path)); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Abort removes the temporary file; path keeps its old content. It may be
// called after a failed Commit, and more than once.
func (p *Pending) Abort() {
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
	os.Remove(p.tmp)
}
