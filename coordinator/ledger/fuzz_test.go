package ledger

import (
	"bytes"
	"os"
	"testing"
)

// FuzzParse checks that Parse and Verify never panic, and that whatever
// Parse accepts is in canonical form: re-encoding gives the input back.
func FuzzParse(f *testing.F) {
	l, _ := writeLedger(f, 2)
	data, err := os.ReadFile(l.Path())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Add([]byte("{}\n"))
	f.Add([]byte(`{"version":1,"aggregation":{"method":"x","y":[]}}` + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := Parse(bytes.NewReader(b))
		if err != nil {
			return
		}
		var out bytes.Buffer
		for _, r := range recs {
			line, err := r.MarshalLine()
			if err != nil {
				t.Fatalf("parsed record does not encode: %v", err)
			}
			out.Write(append(line, '\n'))
		}
		if !bytes.Equal(out.Bytes(), b) {
			t.Fatalf("accepted non-canonical input:\n%q\nre-encodes to\n%q", b, out.Bytes())
		}
		Verify(recs, VerifyOptions{})
	})
}
