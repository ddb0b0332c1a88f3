package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"
)

// A chat template is code: tokenizer_config.json's chat_template comes with
// a base model, which a coordinator ships to every volunteer, and the Jinja
// engine has no limits of its own (`{% for i in range(10**12) %}`, or a
// string doubled forty times, would take a worker's CPU or memory). A
// goroutine cannot be stopped from outside, so CompileChatTemplate renders
// in a child process of the same binary: the child caps its own address
// space (RLIMIT_AS, Linux), a conversation that takes longer than the
// timeout gets the child killed, and each rendering's text is bounded. A
// template that breaks a limit is refused (ErrTemplateRefused): every later
// rendering fails at once with the same error, so a hostile template costs
// one timeout, not one per conversation. A child serves many
// conversations, one at a time; up to Sandbox.Procs children render in
// parallel.
//
// The child is this package's init: a process started with
// OPENCLUSTER_CHAT_TEMPLATE_CHILD=1 in its environment renders for its
// parent on stdin and stdout and exits, whatever the binary (opencluster or
// a test binary) otherwise does.

// Sandbox bounds what rendering one template may cost.
type Sandbox struct {
	// Memory is how much address space a renderer may add to what it has
	// at start (RLIMIT_AS; Linux only: elsewhere only the time and output
	// limits apply).
	Memory int64
	// Timeout bounds one request: a Render, or the renderings
	// AssistantSpans needs for one conversation.
	Timeout time.Duration
	// MaxOutput bounds one rendering's text, in bytes.
	MaxOutput int
	// Procs is how many renderers may run at once (0: up to 4, at most
	// GOMAXPROCS).
	Procs int
}

// DefaultSandbox is what CompileChatTemplate uses. A real template renders
// a conversation in well under a millisecond in a few megabytes.
var DefaultSandbox = Sandbox{Memory: 1 << 30, Timeout: 10 * time.Second, MaxOutput: 64 << 20}

// MaxTemplateBytes bounds a template's source (real ones are a few KB).
const MaxTemplateBytes = 1 << 20

// ErrTemplateRefused is wrapped by the errors of a template that broke a
// sandbox limit, did not compile, or whose renderer died: nothing rendered
// with it can be trusted, and every later call fails the same way.
var ErrTemplateRefused = errors.New("chat template refused")

const childEnv = "OPENCLUSTER_CHAT_TEMPLATE_CHILD"

func init() {
	if os.Getenv(childEnv) == "1" {
		os.Exit(serveRenderer(os.Stdin, os.Stdout))
	}
}

// SandboxChatTemplate prepares src (with the bos_token and eos_token it
// may use) to render in child processes within box's limits. It starts one
// renderer at once, so a template that does not compile is an error here.
func SandboxChatTemplate(src, bos, eos string, box Sandbox) (*ChatTemplate, error) {
	if len(src) > MaxTemplateBytes {
		return nil, fmt.Errorf("chat template: %d bytes, more than %d: %w", len(src), MaxTemplateBytes, ErrTemplateRefused)
	}
	if box.Procs <= 0 {
		box.Procs = min(runtime.GOMAXPROCS(0), 4)
	}
	if box.Memory <= 0 || box.Timeout <= 0 || box.MaxOutput <= 0 {
		return nil, fmt.Errorf("chat template sandbox %+v: every limit must be > 0", box)
	}
	r := &renderers{box: box, hello: rendererHello{Template: src, BOS: bos, EOS: eos, MaxOutput: box.MaxOutput, Memory: box.Memory,
		TimeoutMS: box.Timeout.Milliseconds()}, slots: make(chan struct{}, box.Procs)}
	ch, err := r.acquire()
	if err != nil {
		return nil, err
	}
	r.release(ch, true)
	return &ChatTemplate{box: r, bos: bos, eos: eos}, nil
}

// Close stops a sandboxed template's renderers; the template cannot render
// after it. (An in-process template has nothing to stop.)
func (c *ChatTemplate) Close() error {
	if c == nil || c.box == nil {
		return nil
	}
	c.box.close()
	return nil
}

// rendererHello is the first thing a renderer reads: the template and the
// limits it applies to itself.
type rendererHello struct {
	Template  string `json:"template"`
	BOS       string `json:"bos"`
	EOS       string `json:"eos"`
	MaxOutput int    `json:"max_output"`
	Memory    int64  `json:"memory"`
	TimeoutMS int64  `json:"timeout_ms"`
}

// renderRequest asks for Render (Spans false) or AssistantSpans.
type renderRequest struct {
	Messages            []Message `json:"messages"`
	AddGenerationPrompt bool      `json:"add_generation_prompt"`
	Spans               bool      `json:"spans"`
}

// Reply kinds. A reply is kind (1 byte), a u32 length and that many bytes
// (the text, or the error), then for spans a u32 count and each span as two
// u64. Binary, so the parent bounds the text before reading it.
const (
	replyOK      = 0
	replyError   = 1 // this conversation: the template raised, or turns cannot be located
	replyRefused = 2 // the template: it does not compile, or broke the output limit
)

// maxErrorBytes bounds an error message from a renderer.
const maxErrorBytes = 64 << 10

// renderers is a sandboxed template's pool of child processes.
type renderers struct {
	box   Sandbox
	hello rendererHello
	slots chan struct{} // one per renderer that may be busy

	mu     sync.Mutex
	idle   []*renderer
	err    error // the template was refused: every call fails with it
	closed bool
	starts int // renderers started, for tests
}

func (r *renderers) started() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts
}

// renderer is one child process.
type renderer struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr *headBuffer
	once   sync.Once // kill runs once: from the timeout's timer or its caller
}

// acquire takes an idle renderer or starts one, waiting while Procs are
// busy; release gives it back (ok false: kill it).
func (r *renderers) acquire() (*renderer, error) {
	r.slots <- struct{}{}
	r.mu.Lock()
	err := r.err
	if r.closed {
		err = fmt.Errorf("chat template: used after Close: %w", ErrTemplateRefused)
	}
	var ch *renderer
	if err == nil && len(r.idle) > 0 {
		ch = r.idle[len(r.idle)-1]
		r.idle = r.idle[:len(r.idle)-1]
	}
	r.mu.Unlock()
	if err != nil {
		<-r.slots
		return nil, err
	}
	if ch != nil {
		return ch, nil
	}
	ch, err = r.start()
	if err != nil {
		<-r.slots
		return nil, r.refuse(err)
	}
	return ch, nil
}

func (r *renderers) release(ch *renderer, ok bool) {
	r.mu.Lock()
	if ok && !r.closed && r.err == nil {
		r.idle = append(r.idle, ch)
		ch = nil
	}
	r.mu.Unlock()
	if ch != nil {
		ch.kill()
	}
	<-r.slots
}

// refuse makes err (which wraps ErrTemplateRefused) the template's
// answer from now on and returns it; the first refusal stays.
func (r *renderers) refuse(err error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
	return r.err
}

func (r *renderers) close() {
	r.mu.Lock()
	idle := r.idle
	r.idle, r.closed = nil, true
	r.mu.Unlock()
	for _, ch := range idle {
		ch.kill()
	}
}

// start runs a renderer and has it compile the template.
func (r *renderers) start() (*renderer, error) {
	r.mu.Lock()
	r.starts++
	r.mu.Unlock()
	cmd := exec.Command(selfExe())
	cmd.Env = append(os.Environ(), childEnv+"=1", "GOMAXPROCS=1", "GOTRACEBACK=none")
	cmd.SysProcAttr = rendererAttr()
	ch := &renderer{cmd: cmd, stderr: &headBuffer{max: 4096}}
	cmd.Stderr = ch.stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("chat template renderer: %v: %w", err, ErrTemplateRefused)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("chat template renderer: %v: %w", err, ErrTemplateRefused)
	}
	if err := cmd.Start(); err != nil {
		in.Close()
		return nil, fmt.Errorf("chat template renderer: %v: %w", err, ErrTemplateRefused)
	}
	ch.in, ch.out = in, bufio.NewReader(out)
	hello, _ := json.Marshal(r.hello)
	if _, _, err := r.call(ch, hello, "compiling"); err != nil {
		ch.kill()
		return nil, err
	}
	return ch, nil
}

// render runs one request on a renderer of the pool.
func (r *renderers) render(req renderRequest) (string, []Span, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return "", nil, fmt.Errorf("chat template: the conversation does not encode as JSON: %v", err)
	}
	ch, err := r.acquire()
	if err != nil {
		return "", nil, err
	}
	text, spans, err := r.call(ch, b, "rendering a conversation")
	if errors.Is(err, ErrTemplateRefused) {
		r.release(ch, false)
		return "", nil, r.refuse(err)
	}
	r.release(ch, true)
	return text, spans, err
}

// call sends one frame to ch and reads its reply within the timeout. A
// renderer that overruns is killed; what went wrong comes back wrapping
// ErrTemplateRefused. A reply of kind replyError is a plain error.
func (r *renderers) call(ch *renderer, frame []byte, doing string) (string, []Span, error) {
	var timedOut bool
	var mu sync.Mutex
	timer := time.AfterFunc(r.box.Timeout, func() {
		mu.Lock()
		timedOut = true
		mu.Unlock()
		ch.kill()
	})
	text, spans, kind, err := ch.exchange(frame, r.box.MaxOutput)
	timer.Stop()
	mu.Lock()
	late := timedOut
	mu.Unlock()
	switch {
	case late:
		return "", nil, fmt.Errorf("chat template: %s took longer than %v; the template is refused: %w", doing, r.box.Timeout, ErrTemplateRefused)
	case err != nil:
		ch.kill()
		why := strings.TrimSpace(ch.stderr.String())
		if outOfMemory(why) {
			why = fmt.Sprintf("it needed more than its %d MiB of memory (%s)", r.box.Memory>>20, firstLine(why))
		} else if why == "" {
			why = err.Error()
		} else {
			why = firstLine(why)
		}
		return "", nil, fmt.Errorf("chat template: the renderer stopped while %s: %s; the template is refused: %w", doing, why, ErrTemplateRefused)
	case kind == replyRefused:
		return "", nil, fmt.Errorf("%s; the template is refused: %w", text, ErrTemplateRefused)
	case kind == replyError:
		return "", nil, errors.New(text)
	}
	return text, spans, nil
}

// exchange writes a frame and reads the reply, refusing one larger than
// maxText.
func (ch *renderer) exchange(frame []byte, maxText int) (string, []Span, byte, error) {
	if err := writeFrame(ch.in, frame); err != nil {
		return "", nil, 0, err
	}
	var head [5]byte
	if _, err := io.ReadFull(ch.out, head[:]); err != nil {
		return "", nil, 0, err
	}
	kind, n := head[0], binary.LittleEndian.Uint32(head[1:])
	limit := uint32(maxText)
	if kind != replyOK {
		limit = maxErrorBytes
	}
	if kind > replyRefused || n > limit {
		return "", nil, 0, fmt.Errorf("malformed reply (kind %d, %d bytes)", kind, n)
	}
	text := make([]byte, n)
	if _, err := io.ReadFull(ch.out, text); err != nil {
		return "", nil, 0, err
	}
	if kind != replyOK {
		return string(text), nil, kind, nil
	}
	var cnt [4]byte
	if _, err := io.ReadFull(ch.out, cnt[:]); err != nil {
		return "", nil, 0, err
	}
	count := binary.LittleEndian.Uint32(cnt[:])
	if count > 1<<20 {
		return "", nil, 0, fmt.Errorf("malformed reply (%d spans)", count)
	}
	var spans []Span
	prev := 0
	for range count {
		var sp [16]byte
		if _, err := io.ReadFull(ch.out, sp[:]); err != nil {
			return "", nil, 0, err
		}
		s, e := binary.LittleEndian.Uint64(sp[:]), binary.LittleEndian.Uint64(sp[8:])
		if s < uint64(prev) || e < s || e > uint64(n) {
			return "", nil, 0, fmt.Errorf("malformed reply (span %d..%d of %d bytes)", s, e, n)
		}
		spans = append(spans, Span{int(s), int(e)})
		prev = int(e)
	}
	return string(text), spans, replyOK, nil
}

func (ch *renderer) kill() {
	ch.once.Do(func() {
		ch.in.Close()
		ch.cmd.Process.Kill()
		ch.cmd.Wait()
	})
}

func writeFrame(w io.Writer, b []byte) error {
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(b)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func readFrame(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.LittleEndian.Uint32(n[:]))
	_, err := io.ReadFull(r, b)
	return b, err
}

// serveRenderer is the child: it reads the hello, limits itself, compiles
// the template and answers requests until its stdin closes. It returns the
// exit status.
func serveRenderer(in io.Reader, out io.Writer) int {
	rd, w := bufio.NewReader(in), bufio.NewWriter(out)
	b, err := readFrame(rd)
	if err != nil {
		return 2
	}
	var h rendererHello
	if err := json.Unmarshal(b, &h); err != nil {
		return 2
	}
	if err := limitMemory(h.Memory); err != nil {
		fmt.Fprintf(os.Stderr, "chat template renderer: %v\n", err)
		return 2
	}
	reply := func(kind byte, text string, spans []Span) bool {
		var head [5]byte
		head[0] = kind
		binary.LittleEndian.PutUint32(head[1:], uint32(len(text)))
		w.Write(head[:])
		w.WriteString(text)
		if kind == replyOK {
			w.Write(binary.LittleEndian.AppendUint32(nil, uint32(len(spans))))
			for _, s := range spans {
				w.Write(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, uint64(s.Start)), uint64(s.End)))
			}
		}
		return w.Flush() == nil
	}
	fail := func(err error) string {
		s := err.Error()
		if len(s) > maxErrorBytes {
			s = s[:maxErrorBytes]
		}
		return s
	}
	c, err := NewChatTemplate(h.Template, h.BOS, h.EOS)
	if err != nil {
		reply(replyRefused, fail(err), nil)
		return 0
	}
	c.maxOutput = h.MaxOutput
	if !reply(replyOK, "", nil) {
		return 0
	}
	// A backstop should the parent be gone: no request may outlive its
	// timeout by much, whoever is (not) watching.
	grace := time.Duration(h.TimeoutMS)*time.Millisecond + 5*time.Second
	for {
		b, err := readFrame(rd)
		if err != nil {
			return 0 // the parent closed our stdin: done
		}
		var req renderRequest
		if err := json.Unmarshal(b, &req); err != nil {
			reply(replyError, fail(fmt.Errorf("chat template renderer: bad request: %v", err)), nil)
			continue
		}
		watchdog := time.AfterFunc(grace, func() { os.Exit(3) })
		var text string
		var spans []Span
		if req.Spans {
			text, spans, err = c.AssistantSpans(req.Messages)
		} else {
			text, err = c.Render(req.Messages, req.AddGenerationPrompt)
		}
		watchdog.Stop()
		var ok bool
		switch {
		case errors.Is(err, errOutputLimit):
			ok = reply(replyRefused, fail(err), nil)
		case err != nil:
			ok = reply(replyError, fail(err), nil)
		default:
			ok = reply(replyOK, text, spans)
		}
		if !ok {
			return 0
		}
	}
}

// errOutputLimit is a rendering over the sandbox's output limit.
var errOutputLimit = errors.New("the sandbox's output limit")

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if room := h.max - h.b.Len(); room > 0 {
		h.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (h *headBuffer) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.b.String()
}

// outOfMemory reports whether a renderer's last words are the Go runtime's
// (or, in a race-detector build, ThreadSanitizer's) on failing to map
// memory under its address-space limit.
func outOfMemory(stderr string) bool {
	for _, s := range []string{"out of memory", "cannot allocate memory", "address space collisions", "failed to allocate", "errno: 12"} {
		if strings.Contains(stderr, s) {
			return true
		}
	}
	return false
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
