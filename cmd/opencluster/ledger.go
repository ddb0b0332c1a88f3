package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(newLedgerCmd()) }

// Exit statuses of `ledger verify`.
const (
	exitLedgerInvalid    = 1 // the ledger was read and fails verification
	exitLedgerUnreadable = 2 // the ledger could not be read (missing file, network, TLS)
)

// ledgerError carries the exit status of `ledger verify` to main.
type ledgerError struct {
	code int
	err  error
}

func (e *ledgerError) Error() string { return e.err.Error() }
func (e *ledgerError) Unwrap() error { return e.err }
func (e *ledgerError) ExitCode() int { return e.code }

func newLedgerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ledger",
		Short: "Inspect the verifiable ledger of federated rounds",
	}
	cmd.AddCommand(newLedgerVerifyCmd())
	return cmd
}

func newLedgerVerifyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify [FILE|URL]",
		Short: "Check every hash, link and signature of a ledger",
		Long: `Verify a ledger: a ledger.jsonl file, or the https:// (or http://) URL of a
coordinator (its /v1/ledger endpoint; a bare host URL gets /v1/ledger added).

Every record's hash, its link to the previous record, the index sequence,
the adapter hashes from round to round and the coordinator's signature are
checked. With --updates DIR, each accepted update kept in DIR (files named by
the update's SHA-256) is re-hashed and its worker's signature and claims are
checked too. --coordinator-key pins the key that must sign the chain and
--head the hash the last record must have (a hash chain alone cannot tell
that records were cut off the end).

With --coordinator-dir DIR (a coordinator's state directory) FILE defaults to
DIR/ledger.jsonl, every record must be signed by the directory's key
(DIR/coordinator.pub, else DIR/coordinator.key), the accepted updates kept in
DIR/updates are checked as with
--updates, and every round's aggregate is recomputed from them: the adapter
before (DIR/blobs) plus the FedAvg of the stored updates, through the server
optimizer, must hash to the record's adapter_after. Each round is
recomputed under the policy its record states; records from before records
stated their policy are recomputed under --config (default
DIR/coordinator.effective.yaml, the config the coordinator ran with, else
DIR/coordinator.yaml).

Exit status: 0 when the ledger verifies, 1 when it does not (the first bad
record is named), 2 when it could not be read.`,
		Args: cobra.RangeArgs(0, 1),
		RunE: runLedgerVerify,
	}
	f := cmd.Flags()
	f.String("updates", "", "directory of stored update files named by their SHA-256, to check worker signatures")
	f.String("coordinator-key", "", `the coordinator's public key ("ed25519:<base64>") that must sign every record`)
	f.String("head", "", "hash the last record must have")
	f.Bool("insecure", false, "for URLs: accept any TLS certificate (a self-signed local coordinator)")
	f.String("ca", "", "for URLs: PEM file of the certificate authority (or self-signed certificate) to trust")
	f.Duration("timeout", time.Minute, "for URLs: time limit for the whole download")
	f.String("coordinator-dir", "", "a coordinator's state directory: check its stored updates and recompute every aggregate")
	f.String("config", "", "with --coordinator-dir: the coordinator's config file (default DIR/coordinator.effective.yaml, else DIR/coordinator.yaml)")
	return cmd
}

func runLedgerVerify(cmd *cobra.Command, args []string) error {
	f := cmd.Flags()
	updates, _ := f.GetString("updates")
	coordKey, _ := f.GetString("coordinator-key")
	head, _ := f.GetString("head")
	insecure, _ := f.GetBool("insecure")
	caFile, _ := f.GetString("ca")
	timeout, _ := f.GetDuration("timeout")

	coordDir, _ := f.GetString("coordinator-dir")

	opts := ledger.VerifyOptions{CoordinatorKey: coordKey, Head: head}
	var recomputed int
	if coordDir != "" {
		if fi, err := os.Stat(coordDir); err != nil || !fi.IsDir() {
			return &ledgerError{exitLedgerUnreadable, fmt.Errorf("--coordinator-dir %s: not a readable directory", coordDir)}
		}
		if f.Lookup("config").Value.String() == "" {
			// The config the coordinator ran with, else the demo's file.
			c := filepath.Join(coordDir, effectiveConfigFile)
			if _, err := os.Stat(c); err != nil {
				c = filepath.Join(coordDir, "coordinator.yaml")
			}
			f.Set("config", c)
		}
		cfg, err := loadCoordinatorConfig(cmd)
		if err != nil {
			return &ledgerError{exitLedgerUnreadable, fmt.Errorf("--coordinator-dir %s: the round policy to recompute with: %w", coordDir, err)}
		}
		dirKey, err := coordinator.DirPublicKey(coordDir)
		if err != nil {
			return &ledgerError{exitLedgerUnreadable, fmt.Errorf("--coordinator-dir %s: %w", coordDir, err)}
		}
		if coordKey != "" && coordKey != dirKey {
			return &ledgerError{exitLedgerInvalid, fmt.Errorf("--coordinator-key %s is not the key of --coordinator-dir %s (%s)", coordKey, coordDir, dirKey)}
		}
		opts.CoordinatorKey = dirKey
		recompute := coordinator.Recompute(coordDir, cfg.Rounds.Config)
		opts.Recompute = func(r ledger.Record) (string, error) {
			h, err := recompute(r)
			if err == nil {
				recomputed++
			}
			return h, err
		}
		if updates == "" {
			updates = filepath.Join(coordDir, "updates")
		}
		if len(args) == 0 {
			args = []string{filepath.Join(coordDir, "ledger.jsonl")}
		}
	} else if f.Changed("config") {
		return &ledgerError{exitLedgerUnreadable, errors.New("--config applies with --coordinator-dir")}
	}
	if len(args) == 0 {
		// A usage error, like cobra's own argument checks.
		return errors.New("accepts 1 arg (a ledger FILE or URL) unless --coordinator-dir DIR is given, received 0")
	}
	if updates != "" {
		fi, err := os.Stat(updates)
		if err != nil {
			return &ledgerError{exitLedgerUnreadable, fmt.Errorf("--updates: %w", err)}
		}
		if !fi.IsDir() {
			return &ledgerError{exitLedgerUnreadable, fmt.Errorf("--updates %s: not a directory", updates)}
		}
		opts.UpdateStore = ledger.DirStore(updates)
	}

	src := args[0]
	var recs []ledger.Record
	var err error
	if strings.HasPrefix(src, "https://") || strings.HasPrefix(src, "http://") {
		recs, err = verifyLedgerURL(cmd, src, insecure, caFile, timeout, opts)
	} else {
		if insecure || caFile != "" {
			return &ledgerError{exitLedgerUnreadable, fmt.Errorf("--insecure and --ca apply to URLs, not the file %s", src)}
		}
		recs, err = ledger.VerifyFile(src, opts)
	}
	var ve *ledger.VerifyError
	switch {
	case errors.As(err, &ve):
		fmt.Fprintf(cmd.OutOrStdout(), "ledger FAILED: %d records before the first bad one\n", ve.Index)
		return &ledgerError{exitLedgerInvalid, fmt.Errorf("ledger verify %s: %w", src, err)}
	case err != nil:
		var le *ledgerError
		if errors.As(err, &le) {
			return err
		}
		return &ledgerError{exitLedgerUnreadable, fmt.Errorf("ledger verify %s: %w", src, err)}
	}
	h := "(empty)"
	if len(recs) > 0 {
		h = recs[len(recs)-1].Hash
	}
	checked := ""
	if updates != "" {
		checked = ", stored updates checked"
	}
	if coordDir != "" {
		checked += fmt.Sprintf(", %d of %d aggregates recomputed", recomputed, len(recs))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "ledger OK: %d records, head %s%s\n", len(recs), h, checked)
	return nil
}

// verifyLedgerURL downloads a coordinator's ledger and verifies it as it
// streams in.
func verifyLedgerURL(cmd *cobra.Command, raw string, insecure bool, caFile string, timeout time.Duration, opts ledger.VerifyOptions) ([]ledger.Record, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, &ledgerError{exitLedgerUnreadable, fmt.Errorf("ledger URL %q: want http(s)://host[:port][/v1/ledger]", raw)}
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/ledger"
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, &ledgerError{exitLedgerUnreadable, fmt.Errorf("--ca: %w", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &ledgerError{exitLedgerUnreadable, fmt.Errorf("--ca %s: no PEM certificate in the file", caFile)}
		}
		tlsConf.RootCAs = pool
	}
	if insecure {
		tlsConf.InsecureSkipVerify = true
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	tr.ForceAttemptHTTP2 = true
	client := &http.Client{Transport: tr, Timeout: timeout}
	defer tr.CloseIdleConnections()

	req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, &ledgerError{exitLedgerUnreadable, err}
	}
	req.Header.Set("Accept", "application/jsonl")
	resp, err := client.Do(req)
	if err != nil {
		return nil, &ledgerError{exitLedgerUnreadable, fmt.Errorf("ledger verify: %w", err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := strings.TrimSpace(string(body))
		var eb struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		return nil, &ledgerError{exitLedgerUnreadable, fmt.Errorf("ledger verify: GET %s: %s: %s", u, resp.Status, msg)}
	}
	return ledger.VerifyReader(resp.Body, opts)
}
