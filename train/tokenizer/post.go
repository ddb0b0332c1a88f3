package tokenizer

import (
	"encoding/json"
	"fmt"
)

// postProcessor adds the special tokens of a single sequence.
type postProcessor interface {
	process(ids []int32) []int32
}

type postSequence []postProcessor

func (s postSequence) process(ids []int32) []int32 {
	for _, p := range s {
		ids = p.process(ids)
	}
	return ids
}

// noPost is a post-processor that changes no ids (ByteLevel only trims
// offsets).
type noPost struct{}

func (noPost) process(ids []int32) []int32 { return ids }

// template is TemplateProcessing's "single" template: fixed ids before and
// after the sequence.
type template struct {
	before, after []int32
}

func (t template) process(ids []int32) []int32 {
	out := make([]int32, 0, len(t.before)+len(ids)+len(t.after))
	out = append(out, t.before...)
	out = append(out, ids...)
	return append(out, t.after...)
}

func parsePostProcessor(raw json.RawMessage, path string, tok *Tokenizer) (postProcessor, error) {
	kind, err := typed(raw, path)
	if err != nil {
		return nil, err
	}
	switch kind {
	case "Sequence":
		seq, err := parseList(raw, path, "processors", func(r json.RawMessage, p string) (postProcessor, error) { return parsePostProcessor(r, p, tok) })
		return postSequence(seq), err
	case "ByteLevel":
		return noPost{}, nil
	case "TemplateProcessing":
		var v struct {
			Single []struct {
				SpecialToken *struct {
					ID string `json:"id"`
				} `json:"SpecialToken"`
				Sequence *struct {
					ID string `json:"id"`
				} `json:"Sequence"`
			} `json:"single"`
			SpecialTokens map[string]struct {
				IDs []int64 `json:"ids"`
			} `json:"special_tokens"`
		}
		if err := decodeInto(raw, path, &v); err != nil {
			return nil, err
		}
		var t template
		seen := false
		for i, item := range v.Single {
			p := fmt.Sprintf("%s.single[%d]", path, i)
			switch {
			case item.Sequence != nil:
				if item.Sequence.ID != "A" || seen {
					return nil, errAt(p, "a single-sequence template must hold sequence A exactly once")
				}
				seen = true
			case item.SpecialToken != nil:
				st, ok := v.SpecialTokens[item.SpecialToken.ID]
				if !ok {
					return nil, errAt(p, "special token %q is not in %s.special_tokens", item.SpecialToken.ID, path)
				}
				for _, id := range st.IDs {
					if id < 0 || id >= maxTokenID {
						return nil, errAt(fmt.Sprintf("%s.special_tokens[%q]", path, item.SpecialToken.ID), "id %d out of range", id)
					}
					if seen {
						t.after = append(t.after, int32(id))
					} else {
						t.before = append(t.before, int32(id))
					}
				}
			default:
				return nil, errAt(p, "want SpecialToken or Sequence")
			}
		}
		if !seen {
			return nil, errAt(path+".single", "has no sequence A")
		}
		return t, nil
	}
	return nil, unsupported(path+".type", kind)
}
