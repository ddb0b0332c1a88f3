package netclient

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// TLSOptions says how the worker trusts the coordinator. A coordinator run
// by a volunteer usually has a self-signed certificate: pass its file as
// CAFile, or pin its SHA-256 fingerprint. Insecure skips verification and
// is allowed only for a loopback coordinator (the demo, tests).
type TLSOptions struct {
	CAFile   string // PEM file of the certificate(s) to trust
	Pin      string // SHA-256 of the coordinator's leaf certificate (DER), hex; colons allowed
	Insecure bool   // no verification; loopback only
}

// ParsePin normalises a fingerprint: 64 hex digits, colons and case ignored.
func ParsePin(pin string) ([]byte, error) {
	s := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(pin), ":", ""))
	s = strings.TrimPrefix(s, "sha256/")
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("netclient: --pin %q: want the certificate's SHA-256 as 64 hex digits", pin)
	}
	return b, nil
}

// Fingerprint is the hex SHA-256 of a certificate's DER bytes: what --pin takes.
func Fingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return hex.EncodeToString(h[:])
}

// isLoopback reports whether host (no port) is localhost or a loopback IP.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// NewHTTPClient returns the HTTP client the worker uses for coordinator:
// HTTP/2 over TLS when the URL is https, with the trust o describes, and
// no overall timeout (long polls and big downloads bound themselves with
// contexts). An http URL is allowed only for a loopback host.
func NewHTTPClient(coordinator string, o TLSOptions) (*http.Client, error) {
	u, err := url.Parse(coordinator)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("netclient: coordinator URL %q: want https://HOST:PORT", coordinator)
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 0, // long polls
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
	}
	switch u.Scheme {
	case "http":
		if !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("netclient: coordinator URL %q: plain http is allowed only on loopback; use https", coordinator)
		}
		if o.CAFile != "" || o.Pin != "" {
			return nil, fmt.Errorf("netclient: coordinator URL %q is plain http; --ca and --pin need https", coordinator)
		}
		return &http.Client{Transport: tr}, nil
	case "https":
	default:
		return nil, fmt.Errorf("netclient: coordinator URL %q: scheme must be https (or http on loopback)", coordinator)
	}
	cfg, err := o.config(u.Hostname())
	if err != nil {
		return nil, err
	}
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// config builds the tls.Config for host.
func (o TLSOptions) config(host string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	n := 0
	for _, set := range []bool{o.CAFile != "", o.Pin != "", o.Insecure} {
		if set {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("netclient: choose one of --ca, --pin and --insecure")
	}
	switch {
	case o.Insecure:
		if !isLoopback(host) {
			return nil, fmt.Errorf("netclient: --insecure is allowed only for a loopback coordinator, not %q; use --ca or --pin", host)
		}
		cfg.InsecureSkipVerify = true
	case o.CAFile != "":
		b, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("netclient: --ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("netclient: --ca %s: no PEM certificate in the file", o.CAFile)
		}
		cfg.RootCAs = pool
	case o.Pin != "":
		want, err := ParsePin(o.Pin)
		if err != nil {
			return nil, err
		}
		// The chain is not checked against any CA: the pin is the trust.
		// The leaf's fingerprint must match exactly.
		cfg.InsecureSkipVerify = true
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("netclient: the coordinator sent no certificate")
			}
			got := sha256.Sum256(raw[0])
			if string(got[:]) != string(want) {
				return fmt.Errorf("netclient: coordinator certificate fingerprint %x does not match --pin %x", got, want)
			}
			return nil
		}
	}
	return cfg, nil
}
