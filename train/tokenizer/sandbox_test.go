package tokenizer

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Templates in the style of the real ones (ChatML, Llama 3, Mistral's
// alternation check), with conversations that exercise loops, filters,
// special tokens, extra fields and raise_exception.
var sandboxTemplates = map[string]string{
	"chatml": `{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>\n' }}{% endfor %}` +
		`{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}`,
	"llama3": `{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}` +
		`{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}`,
	"mistral": `{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}` +
		`{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}` +
		`{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}`,
	"fields": `{% for m in messages %}{{ m['role'] }}{% if m['name'] is defined %}({{ m['name'] }}){% endif %}: {{ m['content'] }}` +
		`{% if m['tags'] %} [{{ m['tags'] | join(', ') }}]{% endif %}\n{% endfor %}`,
}

var sandboxChats = [][]Message{
	{{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}},
	{{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
		{"role": "user", "content": "Und auf Deutsch? 日本語も"}, {"role": "assistant", "content": "Hallo! こんにちは"}},
	{{"role": "user", "content": "a", "name": "ann", "tags": []any{"x", "y"}}, {"role": "assistant", "content": "b\n\nc"}},
	{{"role": "user", "content": "one"}, {"role": "user", "content": "two"}, {"role": "assistant", "content": "three"}},
	nil,
}

// A sandboxed template renders exactly what the same template renders in
// process: the text, the assistant spans, and the template's own errors.
func TestSandboxRendersLikeInProcess(t *testing.T) {
	for name, src := range sandboxTemplates {
		local, err := NewChatTemplate(src, "<s>", "</s>")
		if err != nil {
			t.Fatal(err)
		}
		boxed, err := SandboxChatTemplate(src, "<s>", "</s>", DefaultSandbox)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, chat := range sandboxChats {
			for _, gen := range []bool{false, true} {
				want, werr := local.Render(chat, gen)
				got, gerr := boxed.Render(chat, gen)
				if got != want || (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
					t.Errorf("%s, chat %d, generation prompt %v: sandboxed %q (%v), in process %q (%v)", name, i, gen, got, gerr, want, werr)
				}
			}
			wt, ws, werr := local.AssistantSpans(chat)
			gt, gs, gerr := boxed.AssistantSpans(chat)
			if gt != wt || fmt.Sprint(gs) != fmt.Sprint(ws) || (werr == nil) != (gerr == nil) {
				t.Errorf("%s, chat %d: sandboxed spans %v of %q (%v), in process %v of %q (%v)", name, i, gs, gt, gerr, ws, wt, werr)
			}
			if errors.Is(gerr, ErrTemplateRefused) {
				t.Errorf("%s, chat %d: a conversation the template rejects refused the whole template: %v", name, i, gerr)
			}
		}
		boxed.Close()
		if _, err := boxed.Render(sandboxChats[0], false); !errors.Is(err, ErrTemplateRefused) {
			t.Errorf("%s: render after Close: %v", name, err)
		}
	}
}

// Many conversations rendered at once share a few renderer processes, one
// conversation at a time each.
func TestSandboxServesManyConversations(t *testing.T) {
	box := DefaultSandbox
	box.Procs = 2
	c, err := SandboxChatTemplate(sandboxTemplates["chatml"], "", "", box)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local, _ := NewChatTemplate(sandboxTemplates["chatml"], "", "")
	errs := make(chan error, 8)
	for g := range 8 {
		go func() {
			for i := range 50 {
				chat := []Message{{"role": "user", "content": fmt.Sprintf("question %d.%d", g, i)}, {"role": "assistant", "content": "answer"}}
				got, _, err := c.AssistantSpans(chat)
				want, _, _ := local.AssistantSpans(chat)
				if err == nil && got != want {
					err = fmt.Errorf("got %q, want %q", got, want)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.box.mu.Lock()
	started := len(c.box.idle)
	c.box.mu.Unlock()
	if started < 1 || started > box.Procs {
		t.Errorf("%d renderers idle after the work, want 1..%d", started, box.Procs)
	}
}

// Hostile templates: a loop that never ends, a string doubled until it
// fills memory, unbounded recursion and an oversized output are each
// stopped and refused, the refusal sticks, and this process is unharmed.
func TestSandboxRefusesHostileTemplates(t *testing.T) {
	box := Sandbox{Memory: 256 << 20, Timeout: 3 * time.Second, MaxOutput: 1 << 20, Procs: 1}
	chat := []Message{{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}}
	for _, c := range []struct{ name, src, want string }{
		{"endless loop", `{% for i in range(10**12) %}{% endfor %}`, ""},
		{"endless loop with output", `{% for i in range(10**12) %}{{ i }}{% endfor %}`, ""},
		{"string doubling", `{% set s = 'ab' %}{% for i in range(40) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}`, ""},
		{"recursion", `{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}`, ""},
		{"nested loops", `{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`, "took longer than 3s"},
		{"output", `{% for i in range(300000) %}0123456789{% endfor %}`, "output limit"},
	} {
		tmpl, err := SandboxChatTemplate(c.src, "", "", box)
		if err != nil {
			t.Fatalf("%s: compile: %v", c.name, err)
		}
		_, _, err = tmpl.AssistantSpans(chat)
		if !errors.Is(err, ErrTemplateRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want the template refused (%q)", c.name, err, c.want)
		}
		t.Logf("%s: %v", c.name, err)
		starts := tmpl.box.started()
		if _, again := tmpl.Render(chat, false); again == nil || again.Error() != err.Error() {
			t.Errorf("%s: a second rendering gave %v, want the first refusal again", c.name, again)
		}
		if n := tmpl.box.started(); n != starts {
			t.Errorf("%s: a refused template started another renderer (%d, then %d)", c.name, starts, n)
		}
		tmpl.Close()
	}
	// A template that does not compile is refused at once.
	if _, err := SandboxChatTemplate("{% for x in %}", "", "", box); !errors.Is(err, ErrTemplateRefused) || !strings.Contains(err.Error(), "chat template") {
		t.Errorf("a template that does not compile: %v", err)
	}
	if _, err := SandboxChatTemplate(strings.Repeat("x", MaxTemplateBytes+1), "", "", box); !errors.Is(err, ErrTemplateRefused) {
		t.Errorf("an oversized template: %v", err)
	}
}

// BenchmarkEncodeChat encodes a six-turn conversation with its assistant
// mask (what the data loader does per chat line): the template rendered
// in this process (the peer) and in the sandbox (what CompileChatTemplate
// does), one conversation after another on one renderer, and from every
// core at once.
func BenchmarkEncodeChat(b *testing.B) {
	tok, _, err := Train([]string{strings.Repeat("The capital of France is Paris. What is the capital of Spain? ", 200)}, 400)
	if err != nil {
		b.Fatal(err)
	}
	var chat []Message
	chat = append(chat, Message{"role": "system", "content": "You are a helpful assistant."})
	for i := range 3 {
		chat = append(chat, Message{"role": "user", "content": fmt.Sprintf("Question %d: what is the capital of France? %s", i, strings.Repeat("Please explain. ", 10))},
			Message{"role": "assistant", "content": fmt.Sprintf("Answer %d: the capital of France is Paris. %s", i, strings.Repeat("It is on the Seine. ", 10))})
	}
	local, err := NewChatTemplate(TrainedChatTemplate, TrainedBOS, TrainedEOS)
	if err != nil {
		b.Fatal(err)
	}
	boxed, err := SandboxChatTemplate(TrainedChatTemplate, TrainedBOS, TrainedEOS, DefaultSandbox)
	if err != nil {
		b.Fatal(err)
	}
	defer boxed.Close()
	for _, c := range []struct {
		name string
		tmpl *ChatTemplate
	}{{"in-process", local}, {"sandboxed", boxed}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := tok.EncodeChat(c.tmpl, chat); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"-parallel", func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, _, err := tok.EncodeChat(c.tmpl, chat); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
