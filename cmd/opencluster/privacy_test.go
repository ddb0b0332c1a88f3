package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func executePrivacy(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := &cobra.Command{Use: "opencluster", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newPrivacyCmd())
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"privacy"}, args...))
	err := root.Execute()
	return out.String(), errOut.String(), err
}

func TestPrivacyCommand(t *testing.T) {
	out, _, err := executePrivacy(t, "--rounds", "100", "--cohort", "100", "--population", "10000", "--noise", "1.0", "--delta", "1e-6")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ε = ", "without replacement", "Poisson", "after round 100"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = executePrivacy(t, "--rounds", "10", "--cohort", "50", "--population", "1000", "--noise", "1.5", "--secure-agg", "--length", "4096")
	if err != nil || !strings.Contains(out, "Skellam") {
		t.Fatalf("secure-agg: %v\n%s", err, out)
	}
	for _, c := range []struct{ args, want string }{
		{"--rounds 0 --cohort 1 --population 2 --noise 1", "rounds"},
		{"--rounds 1 --cohort 5 --population 2 --noise 1", "population"},
		{"--rounds 1 --cohort 1 --population 2 --noise 0", "noise"},
		{"--rounds 1 --cohort 1 --population 2 --noise 1 --delta 2", "delta"},
		{"--rounds 1 --cohort 2 --population 2 --noise 1 --secure-agg", "--length"},
	} {
		_, _, err := executePrivacy(t, strings.Fields(c.args)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: error %v, want one naming %q", c.args, err, c.want)
		}
	}
}
