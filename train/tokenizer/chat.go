package tokenizer

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ardanlabs/jinja"
)

// Message is one chat turn as a template sees it: "role" and "content",
// plus any other fields the conversation carries.
type Message map[string]any

// Role returns the message's role ("" when missing or not a string).
func (m Message) Role() string {
	s, _ := m["role"].(string)
	return s
}

// ChatTemplate is a compiled Jinja chat template (tokenizer_config.json's
// chat_template) with the special tokens it may refer to. It renders in
// this process (NewChatTemplate) or in sandboxed child processes
// (SandboxChatTemplate, which CompileChatTemplate uses).
type ChatTemplate struct {
	tmpl      *jinja.Template // in-process
	box       *renderers      // sandboxed
	bos, eos  string
	maxOutput int // in-process: bytes one rendering may produce (0: no limit)
}

// NewChatTemplate compiles src to render in this process, without limits:
// for templates you trust (the sandbox's renderers use it). bos and eos
// are the values of bos_token and eos_token inside the template.
func NewChatTemplate(src, bos, eos string) (*ChatTemplate, error) {
	t, err := jinja.Compile(src)
	if err != nil {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	return &ChatTemplate{tmpl: t, bos: bos, eos: eos}, nil
}

// CompileChatTemplate prepares the tokenizer's chat template, with its BOS
// and EOS tokens, to render within DefaultSandbox's limits (the template
// came with a model: it is someone else's code). A tokenizer without one
// is an error. Close the template when done with it.
func (t *Tokenizer) CompileChatTemplate() (*ChatTemplate, error) {
	if t.chatTemplate == "" {
		return nil, errors.New("tokenizer has no chat_template (tokenizer_config.json); chat data needs one")
	}
	return SandboxChatTemplate(t.chatTemplate, t.bos, t.eos, DefaultSandbox)
}

// Render renders a conversation as transformers' apply_chat_template does
// (bos_token, eos_token and add_generation_prompt are set).
func (c *ChatTemplate) Render(msgs []Message, addGenerationPrompt bool) (string, error) {
	if c.box != nil {
		text, _, err := c.box.render(renderRequest{Messages: msgs, AddGenerationPrompt: addGenerationPrompt})
		return text, err
	}
	list := make([]any, len(msgs))
	for i, m := range msgs {
		list[i] = map[string]any(m)
	}
	out, err := c.tmpl.Render(map[string]any{
		"messages":              list,
		"bos_token":             c.bos,
		"eos_token":             c.eos,
		"add_generation_prompt": addGenerationPrompt,
	})
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	if c.maxOutput > 0 && len(out) > c.maxOutput {
		return "", fmt.Errorf("chat template: a rendering of %d bytes is over %w of %d bytes", len(out), errOutputLimit, c.maxOutput)
	}
	return out, nil
}

// Span is a byte range [Start, End) of rendered text.
type Span struct{ Start, End int }

// AssistantSpans renders msgs and returns the text with the byte range of
// every assistant turn: what the model is trained to write. Turn k's range
// runs from the end of the first k messages rendered with the generation
// prompt to the end of the first k+1; the template must render a
// conversation's beginning as a prefix of the whole (the Llama 3, ChatML and
// Mistral templates do; one that always appends its generation prompt is
// handled too), else it is an error naming the turn (Qwen3's, which adds an
// empty think block to the last turn only, is such a template).
func (c *ChatTemplate) AssistantSpans(msgs []Message) (string, []Span, error) {
	if c.box != nil {
		return c.box.render(renderRequest{Messages: msgs, Spans: true})
	}
	full, err := c.Render(msgs, false)
	if err != nil {
		return "", nil, err
	}
	// Some templates end every rendering with the generation prompt whether
	// asked or not (an early Llama 3 one does): what they render for no
	// messages is that tail, and it is not part of a turn.
	tail, _ := c.Render(nil, false)
	var spans []Span
	for k, m := range msgs {
		if m.Role() != "assistant" {
			continue
		}
		before, err := c.Render(msgs[:k], true)
		if err != nil {
			return "", nil, fmt.Errorf("rendering the %d messages before assistant turn %d: %w", k, k, err)
		}
		upto, err := c.Render(msgs[:k+1], false)
		if err != nil {
			return "", nil, fmt.Errorf("rendering up to assistant turn %d: %w", k, err)
		}
		if tail != "" && strings.HasSuffix(upto, tail) {
			upto = upto[:len(upto)-len(tail)]
		}
		if !strings.HasPrefix(full, upto) || !strings.HasPrefix(upto, before) {
			return "", nil, fmt.Errorf("chat template: rendering the first %d messages is not a prefix of the whole conversation, so assistant turn %d cannot be located for loss masking", k+1, k)
		}
		spans = append(spans, Span{len(before), len(upto)})
	}
	return full, spans, nil
}

// EncodeChat renders msgs with the chat template and encodes the text (no
// special tokens added: templates write their own, as apply_chat_template
// does). assistant[i] reports whether token i belongs to an assistant turn.
// A token that straddles a turn's start counts as the turn's and one that
// straddles its end does not (with the Llama 3, ChatML and Mistral
// templates special tokens or newlines sit at the boundaries, and no token
// straddles them).
func (t *Tokenizer) EncodeChat(c *ChatTemplate, msgs []Message) (ids []int32, assistant []bool, err error) {
	text, spans, err := c.AssistantSpans(msgs)
	if err != nil {
		return nil, nil, err
	}
	ids = t.Encode(text, false)
	assistant = make([]bool, len(ids))
	for _, s := range spans {
		from := commonPrefix(t.Encode(text[:s.Start], false), ids)
		to := len(ids)
		if s.End < len(text) {
			to = commonPrefix(t.Encode(text[:s.End], false), ids)
		}
		for i := from; i < to; i++ {
			assistant[i] = true
		}
	}
	return ids, assistant, nil
}

func commonPrefix(a, b []int32) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
