package tokenizer

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
)

// tokenConfig is the part of tokenizer_config.json and
// special_tokens_map.json we read.
type tokenConfig struct {
	BOS            json.RawMessage `json:"bos_token"`
	EOS            json.RawMessage `json:"eos_token"`
	Pad            json.RawMessage `json:"pad_token"`
	Unk            json.RawMessage `json:"unk_token"`
	AddBOS         *bool           `json:"add_bos_token"`
	AddEOS         *bool           `json:"add_eos_token"`
	TokenizerClass string          `json:"tokenizer_class"`
	ChatTemplate   json.RawMessage `json:"chat_template"`
}

// specialString reads a special token written as a string or as an
// AddedToken object {"content": ...}; null means none.
func specialString(raw json.RawMessage, field string) (string, bool, error) {
	if isNull(raw) {
		return "", false, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true, nil
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Content != nil {
		return *obj.Content, true, nil
	}
	return "", false, fmt.Errorf("%s: want a string or {\"content\": ...}, got %s", field, truncateJSON(raw))
}

// applyConfig reads tokenizer_config.json or special_tokens_map.json (name
// says which, for messages); tokenizer_config.json is read last and wins.
func (t *Tokenizer) applyConfig(raw []byte, name string) error {
	var c tokenConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return err
	}
	t.hash = sha256.Sum256(append(append(t.hash[:], name...), raw...))
	for _, f := range []struct {
		raw  json.RawMessage
		name string
		dst  *string
	}{{c.BOS, "bos_token", &t.bos}, {c.EOS, "eos_token", &t.eos}, {c.Pad, "pad_token", &t.pad}, {c.Unk, "unk_token", &t.unk}} {
		s, ok, err := specialString(f.raw, f.name)
		if err != nil {
			return err
		}
		if ok {
			if _, known := t.TokenID(s); !known {
				return fmt.Errorf("%s: %q is not a token of tokenizer.json", f.name, s)
			}
			*f.dst = s
		}
	}
	if !isNull(c.ChatTemplate) {
		tmpl, err := chatTemplateField(c.ChatTemplate)
		if err != nil {
			return err
		}
		t.chatTemplate = tmpl
	}
	switch c.TokenizerClass {
	case "LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast":
		// transformers rebuilds these classes' post-processor from
		// add_bos_token (default true) and add_eos_token (default false).
		return t.rebuildLlamaPost(c.AddBOS == nil || *c.AddBOS, c.AddEOS != nil && *c.AddEOS)
	}
	return nil
}

func (t *Tokenizer) rebuildLlamaPost(addBOS, addEOS bool) error {
	var tmpl template
	if addBOS {
		_, id, ok := t.BOS()
		if !ok {
			return fmt.Errorf("add_bos_token is set but there is no bos_token")
		}
		tmpl.before = []int32{id}
	}
	if addEOS {
		_, id, ok := t.EOS()
		if !ok {
			return fmt.Errorf("add_eos_token is set but there is no eos_token")
		}
		tmpl.after = []int32{id}
	}
	t.post = tmpl
	return nil
}

// chatTemplateField reads chat_template: a string, or a list of named
// templates of which "default" is used.
func chatTemplateField(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", fmt.Errorf("chat_template: want a string or a list of {name, template}: %v", err)
	}
	for _, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
	}
	return "", fmt.Errorf("chat_template: the list has no template named \"default\"")
}
