package netclient

import (
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// CorpusOptions shapes SplitCorpus.
type CorpusOptions struct {
	// Src is the tree to split: $GOROOT/src, or any folder of text.
	Src string
	// Out receives Out/shard-<i>/ and Out/val/.
	Out string
	// Shards is the number of workers.
	Shards int
	// Ext keeps only files with this suffix ("" keeps all).
	Ext string
	// MaxShardBytes caps each shard (0: no cap); MaxValBytes the held-out set.
	MaxShardBytes, MaxValBytes int64
	// ValEvery holds out about one file in ValEvery (by a hash of its path).
	ValEvery int
}

// Corpus is what SplitCorpus wrote.
type Corpus struct {
	Shards     []string // one directory per worker
	ShardBytes []int64
	Groups     [][]string // the top-level folders in each shard
	Val        string     // held-out files from every group
	ValBytes   int64
}

// SplitCorpus copies a tree into non-IID shards: the top-level folders
// (for $GOROOT/src, package groups such as net, crypto, go, runtime) are
// dealt to the shards in turn, largest first, so each worker sees its own
// kinds of code. About one file in ValEvery, from every group, goes to a
// held-out validation folder instead, which no shard contains. Folders
// named testdata and hidden entries are skipped. The result depends only
// on the tree and the options.
func SplitCorpus(o CorpusOptions) (Corpus, error) {
	var c Corpus
	if o.Shards < 1 {
		return c, fmt.Errorf("netclient: corpus: %d shards; want at least 1", o.Shards)
	}
	if o.ValEvery < 2 {
		o.ValEvery = 10
	}
	type file struct {
		rel  string
		size int64
	}
	groups := map[string][]file{}
	sizes := map[string]int64{}
	err := filepath.WalkDir(o.Src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if p != o.Src && (strings.HasPrefix(name, ".") || name == "testdata") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || (o.Ext != "" && !strings.HasSuffix(name, o.Ext)) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(o.Src, p)
		g, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
		if g == rel { // a file at the top: its own group
			g = "."
		}
		groups[g] = append(groups[g], file{rel, info.Size()})
		sizes[g] += info.Size()
		return nil
	})
	if err != nil {
		return c, fmt.Errorf("netclient: corpus %s: %w", o.Src, err)
	}
	if len(groups) == 0 {
		return c, fmt.Errorf("netclient: corpus %s: no files to split", o.Src)
	}
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	sort.Slice(names, func(i, j int) bool {
		if sizes[names[i]] != sizes[names[j]] {
			return sizes[names[i]] > sizes[names[j]]
		}
		return names[i] < names[j]
	})
	c.Shards = make([]string, o.Shards)
	c.ShardBytes = make([]int64, o.Shards)
	c.Groups = make([][]string, o.Shards)
	c.Val = filepath.Join(o.Out, "val")
	for i := range c.Shards {
		c.Shards[i] = filepath.Join(o.Out, fmt.Sprintf("shard-%d", i))
	}
	copyFile := func(rel, dstDir string) error {
		b, err := os.ReadFile(filepath.Join(o.Src, rel))
		if err != nil {
			return err
		}
		dst := filepath.Join(dstDir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	}
	for gi, g := range names {
		s := gi % o.Shards
		c.Groups[s] = append(c.Groups[s], g)
		files := groups[g]
		sort.Slice(files, func(i, j int) bool { return files[i].rel < files[j].rel })
		for _, f := range files {
			h := fnv.New32a()
			h.Write([]byte(f.rel))
			if int(h.Sum32()%uint32(o.ValEvery)) == 0 {
				if o.MaxValBytes == 0 || c.ValBytes+f.size <= o.MaxValBytes {
					if err := copyFile(f.rel, c.Val); err != nil {
						return c, fmt.Errorf("netclient: corpus: %w", err)
					}
					c.ValBytes += f.size
				}
				continue // held out even when the val set is full
			}
			if o.MaxShardBytes > 0 && c.ShardBytes[s]+f.size > o.MaxShardBytes {
				continue
			}
			if err := copyFile(f.rel, c.Shards[s]); err != nil {
				return c, fmt.Errorf("netclient: corpus: %w", err)
			}
			c.ShardBytes[s] += f.size
		}
	}
	for i, b := range c.ShardBytes {
		if b == 0 {
			return c, fmt.Errorf("netclient: corpus %s: shard %d got no files (too few folders for %d shards, or caps too small)", o.Src, i, o.Shards)
		}
	}
	if c.ValBytes == 0 {
		return c, fmt.Errorf("netclient: corpus %s: no file was held out for validation", o.Src)
	}
	return c, nil
}
