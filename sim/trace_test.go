package sim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
)

// A drawn population written as a trace and read back runs the same, byte
// for byte: --trace-out then --trace repeats a run exactly.
func TestTraceRoundTrip(t *testing.T) {
	cfg := testConfig(t, 2000, 2, 100)
	want, _ := runText(t, cfg)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WritePopulation(&buf, s.Population(), s.Population().WorkerIDs()); err != nil {
		t.Fatal(err)
	}
	pop, err := ReadPopulation("drawn.csv", &buf, cfg.Tables, cfg.Seed)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Trace = pop
	got, _ := runText(t, cfg)
	if got != want {
		t.Fatalf("the run from the written trace differs:\n%s\n---\n%s", got, want)
	}
}

const traceHead = "id,region,gpu,host,down_mbps,up_mbps,reachable,power_cap,idle_start_h,idle_hours,present,budget_start_h,budget_end_h,base_cached\n"

func TestTraceErrors(t *testing.T) {
	tb, _ := DefaultTables()
	good := "a1,DE,RTX 4070,desktop 8-core,100,20,1,1,20,8,0.9,0,0,0\n"
	for _, tc := range []struct{ name, body, want string }{
		{"negative bandwidth", "a1,DE,RTX 4070,desktop 8-core,-5,20,1,1,20,8,0.9,0,0,0\n", "t.csv line 2, field down_mbps: -5 is out of range"},
		{"unknown gpu", good + "a2,DE,RTX 9999,desktop 8-core,100,20,1,1,20,8,0.9,0,0,0\n", `t.csv line 3, field gpu: unknown GPU "RTX 9999"`},
		{"unknown region", "a1,Atlantis,,laptop 4-core,100,20,1,1,20,8,0.9,0,0,0\n", `line 2, field region: unknown region "Atlantis"`},
		{"not a number", "a1,DE,,laptop 4-core,fast,20,1,1,20,8,0.9,0,0,0\n", `line 2, field down_mbps: "fast" is not a number`},
		{"bad bool", "a1,DE,,laptop 4-core,100,20,maybe,1,20,8,0.9,0,0,0\n", `line 2, field reachable: "maybe": want 1 or 0`},
		{"ids out of order", good + good, `line 3, field id: "a1" does not come after "a1"`},
		{"short line", "a1,DE\n", "line 2: 2 fields, the header has 14"},
		{"missing column", "", `header has no "base_cached" column`},
	} {
		head := traceHead
		if tc.name == "missing column" {
			head = strings.Replace(traceHead, ",base_cached", "", 1)
		}
		_, err := ReadPopulation("t.csv", strings.NewReader(head+tc.body), tb, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	pop, err := ReadPopulation("t.csv", strings.NewReader("# a comment\n"+traceHead+good), tb, 1)
	if err != nil || len(pop.Nodes) != 1 || pop.IDs[0] != "a1" || pop.T.Regions[pop.Nodes[0].Region].Code != "DE" {
		t.Fatalf("good trace: %+v, %v", pop, err)
	}
}

// oneByteReader hands out one byte per Read, and counts them.
type oneByteReader struct {
	r io.Reader
	n int
}

func (o *oneByteReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p[:1])
	o.n += n
	return n, err
}

// A window trace is read as the clock reaches each window, not up front;
// its windows are the only times its nodes are available.
func TestWindowTrace(t *testing.T) {
	cfg := testConfig(t, 50, 2, 10)
	var b strings.Builder
	b.WriteString("id,start_s,end_s\n")
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&b, "n%02d,0,7200\n", i)
	}
	for i := 0; i < 50; i++ {
		fmt.Fprintf(&b, "n%02d,90000,100000\n", i)
	}
	src := &oneByteReader{r: strings.NewReader(b.String())}
	w, err := NewWindowReader("w.csv", src)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Windows = w
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Rounds != 2 {
		t.Fatalf("%d rounds", res.Summary.Rounds)
	}
	if src.n >= b.Len() {
		t.Errorf("the run read all %d bytes of the window trace; the second day's windows should still be unread", src.n)
	}

	for _, tc := range []struct{ body, want string }{
		{"n01,100,50\n", "w.csv line 2, field end_s: 50 is before start_s 100"},
		{"n01,100,200\nn02,50,60\n", "w.csv line 3, field start_s: 50 comes after a window starting at 100"},
		{"n01,-1,5\n", "line 2, field start_s: -1 is out of range"},
	} {
		w, _ := NewWindowReader("w.csv", strings.NewReader("id,start_s,end_s\n"+tc.body))
		var err error
		for err == nil {
			var ok bool
			if _, ok, err = w.Peek(); !ok {
				break
			}
			w.Next()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.body, err, tc.want)
		}
	}
	cfg = testConfig(t, 50, 1, 10)
	cfg.Windows, _ = NewWindowReader("w.csv", strings.NewReader("id,start_s,end_s\nnobody,0,10\n"))
	if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), `w.csv line 2, field id: node "nobody" is not in the population`) {
		t.Errorf("unknown node in a window trace: %v", err)
	}
}
