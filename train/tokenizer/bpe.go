package tokenizer

import (
	"sync"
	"unicode/utf8"
)

// bpe is the BPE model: a vocabulary, merge ranks keyed by the pair of ids,
// and a cache of words already split.
type bpe struct {
	vocab        map[string]int32
	merges       map[uint64]merge // pairKey(left, right) -> rank and merged id
	unk          int32            // -1: no unknown token
	fuseUnk      bool
	byteFallback bool
	byteIDs      [256]int32 // <0xXX> ids when byteFallback (-1: missing)
	ignoreMerges bool
	prefix       string // continuing_subword_prefix
	suffix       string // end_of_word_suffix

	cache *wordCache
}

type merge struct {
	rank int32
	id   int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// cacheCapacity bounds the word cache; past it new words are split but not
// remembered (as the tokenizers library does).
const cacheCapacity = 1 << 16

// wordCache maps a pre-tokenized word to its ids.
type wordCache struct {
	mu    sync.RWMutex
	words map[string][]int32
	limit int
}

func newWordCache(limit int) *wordCache {
	return &wordCache{words: make(map[string][]int32), limit: limit}
}

func (c *wordCache) get(w string) ([]int32, bool) {
	c.mu.RLock()
	ids, ok := c.words[w]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []int32) {
	c.mu.Lock()
	if len(c.words) < c.limit {
		c.words[w] = ids
	}
	c.mu.Unlock()
}

// maxCachedWord keeps very long words (a run of 10k spaces) out of the cache.
const maxCachedWord = 256

// appendWord appends the ids of one pre-tokenized word to dst.
func (b *bpe) appendWord(dst []int32, w string) []int32 {
	if w == "" {
		return dst
	}
	if ids, ok := b.cache.get(w); ok {
		return append(dst, ids...)
	}
	ids := b.word(w)
	if len(w) <= maxCachedWord {
		b.cache.put(w, ids)
	}
	return append(dst, ids...)
}

// symbol is one element of the word being merged: a doubly linked list over
// a slice, so a merge is O(1) and removed symbols are marked dead.
type symbol struct {
	id         int32
	prev, next int32
	dead       bool
}

// word splits w into characters (with byte fallback or the unknown token
// for characters outside the vocabulary) and applies merges lowest rank
// first, leftmost first among equals, as the tokenizers library does.
func (b *bpe) word(w string) []int32 {
	if b.ignoreMerges {
		if id, ok := b.vocab[w]; ok {
			return []int32{id}
		}
	}
	syms := make([]symbol, 0, len(w))
	pendingUnk := false
	addUnk := func() {
		syms = append(syms, symbol{id: b.unk})
	}
	for i := 0; i < len(w); {
		_, size := utf8.DecodeRuneInString(w[i:])
		ch := w[i : i+size]
		first, last := i == 0, i+size == len(w)
		i += size
		key := ch
		if !first && b.prefix != "" {
			key = b.prefix + key
		}
		if last && b.suffix != "" {
			key += b.suffix
		}
		if id, ok := b.vocab[key]; ok {
			if pendingUnk {
				addUnk()
				pendingUnk = false
			}
			syms = append(syms, symbol{id: id})
			continue
		}
		if b.byteFallback && b.allBytes(key) {
			// A pending unknown token is not flushed here: the library
			// emits it after these bytes, and so do we.
			for j := 0; j < len(key); j++ {
				syms = append(syms, symbol{id: b.byteIDs[key[j]]})
			}
			continue
		}
		if b.unk >= 0 {
			if pendingUnk && !b.fuseUnk {
				addUnk()
			}
			pendingUnk = true
		}
		// No unknown token: the character is dropped, as the library does.
	}
	if pendingUnk {
		addUnk()
	}
	for i := range syms {
		syms[i].prev, syms[i].next = int32(i-1), int32(i+1)
	}
	if len(syms) > 1 {
		b.mergeAll(syms)
	}
	out := make([]int32, 0, len(syms))
	for i := int32(0); i < int32(len(syms)); i = syms[i].next {
		out = append(out, syms[i].id)
	}
	return out
}

func (b *bpe) allBytes(s string) bool {
	for j := 0; j < len(s); j++ {
		if b.byteIDs[s[j]] < 0 {
			return false
		}
	}
	return true
}

// candidate is a possible merge of syms[pos] with its right neighbour.
type candidate struct {
	rank, pos int32
	id        int32 // the merged id, to detect stale entries
}

// candidates is a binary min-heap ordered by (rank, pos), written out
// rather than through container/heap to avoid boxing every entry.
type candidates []candidate

func (h candidates) less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}

func (h *candidates) push(c candidate) {
	*h = append(*h, c)
	q := *h
	for i := len(q) - 1; i > 0; {
		parent := (i - 1) / 2
		if !q.less(i, parent) {
			break
		}
		q[i], q[parent] = q[parent], q[i]
		i = parent
	}
}

func (h *candidates) pop() candidate {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q = q[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(q) && q.less(l, m) {
			m = l
		}
		if r < len(q) && q.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
	return top
}

// mergeAll applies merges until none applies. syms[0] is always alive (a
// merge keeps the left symbol), so the list starts at index 0.
func (b *bpe) mergeAll(syms []symbol) {
	h := make(candidates, 0, len(syms))
	for i := 0; i+1 < len(syms); i++ {
		if m, ok := b.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			h.push(candidate{rank: m.rank, pos: int32(i), id: m.id})
		}
	}
	n := int32(len(syms))
	for len(h) > 0 {
		c := h.pop()
		left := &syms[c.pos]
		if left.dead || left.next >= n {
			continue
		}
		right := &syms[left.next]
		m, ok := b.merges[pairKey(left.id, right.id)]
		if !ok || m.id != c.id {
			continue // stale: a neighbour changed since it was queued
		}
		left.id = m.id
		right.dead = true
		left.next = right.next
		if right.next < n {
			syms[right.next].prev = c.pos
		}
		if left.prev >= 0 {
			if m, ok := b.merges[pairKey(syms[left.prev].id, left.id)]; ok {
				h.push(candidate{rank: m.rank, pos: left.prev, id: m.id})
			}
		}
		if left.next < n {
			if m, ok := b.merges[pairKey(left.id, syms[left.next].id)]; ok {
				h.push(candidate{rank: m.rank, pos: c.pos, id: m.id})
			}
		}
	}
}
