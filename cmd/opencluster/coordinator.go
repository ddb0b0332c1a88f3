package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencluster/opencluster/coordinator"
	"github.com/opencluster/opencluster/coordinator/ledger"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/web"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// coordinatorConfig is configs/coordinator.yaml.
type coordinatorConfig struct {
	Listen         string                `mapstructure:"listen"`
	DB             string                `mapstructure:"db"`
	DSN            string                `mapstructure:"dsn"`
	TLSCert        string                `mapstructure:"tls_cert"`
	TLSKey         string                `mapstructure:"tls_key"`
	TLSHosts       []string              `mapstructure:"tls_hosts"`
	BaseModel      string                `mapstructure:"base_model"`
	InitialAdapter string                `mapstructure:"initial_adapter"`
	RatePerSecond  float64               `mapstructure:"rate_per_second"`
	RateBurst      int                   `mapstructure:"rate_burst"`
	Tick           time.Duration         `mapstructure:"tick"`
	GridGPerKWh    float64               `mapstructure:"grid_g_per_kwh"`
	Admission      coordinator.Admission `mapstructure:"admission"`
	Rounds         roundsConfig          `mapstructure:"rounds"`
}

// roundsConfig is coordinator.Config plus the recipe under the file's
// snake_case key names.
type roundsConfig struct {
	coordinator.Config `mapstructure:",squash"`
	Recipe             coordinator.Recipe `mapstructure:"recipe"`
}

var coordinatorFlagKeys = map[string]string{"listen": "listen", "db": "db", "dsn": "dsn", "base_model": "base"}

// newCoordinatorCmd builds `opencluster coordinator`.
func newCoordinatorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run federated rounds: pick cohorts, take signed updates, aggregate, keep the ledger",
		Long: `coordinator serves the /v1 API over HTTPS (HTTP/2) and runs rounds until
Ctrl-C, then shuts down gracefully. State lives in --dir: the SQLite database
(or PostgreSQL with --db postgres --dsn ...), content-addressed blobs, the
accepted updates, ledger.jsonl, the coordinator key and the TLS certificate.
Restarted on the same --dir it resumes the round in flight. The config it
runs with (file, environment and flags applied) is kept in
DIR/coordinator.effective.yaml, so a restart needs no --config: it starts
from that file, --config, OPENCLUSTER_* and flags override it, and every
setting that changed is logged.`,
		Args: cobra.NoArgs,
		RunE: runCoordinator,
	}
	f := cmd.Flags()
	f.String("dir", "", "state directory (required)")
	f.String("listen", "127.0.0.1:8443", "address for the HTTPS API")
	f.String("config", "coordinator", "config file or preset")
	f.String("db", "sqlite", "state database: sqlite or postgres")
	f.String("dsn", "", "PostgreSQL connection string (with --db postgres)")
	f.String("base", "", "base model to serve: a Hugging Face folder (its config, weights and tokenizer go to the workers) or a safetensors file (overrides base_model)")
	return cmd
}

func init() { rootCmd.AddCommand(newCoordinatorCmd()) }

// loadCoordinatorConfig reads the config with defaults from the package.
func loadCoordinatorConfig(cmd *cobra.Command) (coordinatorConfig, error) {
	cfg := coordinatorConfig{Listen: "127.0.0.1:8443", DB: "sqlite", RatePerSecond: 20, RateBurst: 40, Tick: time.Second,
		Rounds: roundsConfig{Config: coordinator.DefaultConfig()}}
	cfg.Rounds.Recipe = coordinator.Recipe(cfg.Rounds.Config.Recipe)
	cfg.Rounds.Shapes = nil // the file must give them
	src, _ := cmd.Flags().GetString("config")
	if err := loadConfig(src, cmd.Flags(), coordinatorFlagKeys, &cfg); err != nil {
		return cfg, err
	}
	switch cfg.DB {
	case "sqlite":
	case "postgres":
		if cfg.DSN == "" {
			return cfg, errors.New("db postgres needs dsn (--dsn or OPENCLUSTER_DSN)")
		}
	default:
		return cfg, fmt.Errorf("db %q: want sqlite or postgres", cfg.DB)
	}
	if cfg.Tick <= 0 {
		return cfg, fmt.Errorf("tick %v: want > 0", cfg.Tick)
	}
	if math.IsNaN(cfg.GridGPerKWh) || cfg.GridGPerKWh < 0 || cfg.GridGPerKWh > 2000 {
		return cfg, fmt.Errorf("grid_g_per_kwh %v: want 0 (unknown) to 2000 grams of CO2 per kWh", cfg.GridGPerKWh)
	}
	if cfg.RatePerSecond < 0 || cfg.RateBurst < 0 || (cfg.RatePerSecond > 0 && cfg.RateBurst < 1) {
		return cfg, fmt.Errorf("rate_per_second %v, rate_burst %d: want >= 0, and a burst >= 1 when limiting", cfg.RatePerSecond, cfg.RateBurst)
	}
	cfg.Rounds.Config.Recipe = protocol.Recipe(cfg.Rounds.Recipe)
	_, origin, _ := readConfigSource(src)
	if err := baseShapes(&cfg, strings.HasPrefix(origin, "preset ")); err != nil {
		return cfg, err
	}
	if err := cfg.Rounds.Config.Validate(); err != nil {
		return cfg, err
	}
	if err := cfg.Admission.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func runCoordinator(cmd *cobra.Command, _ []string) error {
	dir, _ := cmd.Flags().GetString("dir")
	if dir == "" {
		return errors.New("--dir is required")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cfg, err := loadCoordinatorConfigIn(cmd, dir, slog.Default())
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	var store coordinator.Store
	if cfg.DB == "postgres" {
		store, err = coordinator.OpenPostgres(ctx, cfg.DSN)
	} else {
		store, err = coordinator.OpenSQLite(ctx, filepath.Join(dir, "coordinator.db"))
	}
	if err != nil {
		return err
	}
	defer store.Close()
	led, err := ledger.Open(dir)
	if err != nil {
		return err
	}
	defer led.Close()
	key, created, err := protocol.LoadOrCreateKey(filepath.Join(dir, coordinator.KeyFile))
	if err != nil {
		return err
	}
	if created {
		slog.Info("coordinator: made a new signing key", "file", filepath.Join(dir, coordinator.KeyFile))
	}
	if err := coordinator.WritePublicKey(dir, key); err != nil {
		return err
	}
	var init []float32
	if cfg.InitialAdapter != "" {
		b, err := os.ReadFile(cfg.InitialAdapter)
		if err != nil {
			return fmt.Errorf("initial_adapter: %w", err)
		}
		if init, err = coordinator.DecodeAdapter(b, cfg.Rounds.N()); err != nil {
			return fmt.Errorf("initial_adapter %s: %w", cfg.InitialAdapter, err)
		}
	}
	hub := web.NewHub(web.HubOptions{Source: protocol.SourceLive, CoordinatorKey: protocol.EncodePublicKey(key.Public().(ed25519.PublicKey)),
		Model: cfg.Rounds.Model})
	defer hub.Close()
	beforeUnmask, err := pauseBeforeUnmaskHook()
	if err != nil {
		return err
	}
	afterClose, err := pauseAfterCloseHook()
	if err != nil {
		return err
	}
	c, err := coordinator.New(ctx, cfg.Rounds.Config, coordinator.Options{Dir: dir, Store: store, Ledger: led, Key: key,
		InitialAdapter: init, BaseModelPath: cfg.BaseModel, Events: hub, GridGPerKWh: cfg.GridGPerKWh, AfterClose: afterClose, Admission: cfg.Admission, BeforeUnmask: beforeUnmask})
	if err != nil {
		return err
	}
	tlsCfg, madeCert, err := coordinator.LoadOrCreateTLS(dir, cfg.TLSCert, cfg.TLSKey, cfg.TLSHosts)
	if err != nil {
		return err
	}
	if madeCert {
		slog.Info("coordinator: made a self-signed TLS certificate", "file", filepath.Join(dir, "tls.crt"))
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	api := coordinator.NewServer(c, coordinator.ServerOptions{RatePerSecond: cfg.RatePerSecond, Burst: cfg.RateBurst})
	srv := coordinator.HTTPServer(web.Handler(hub, api), tlsCfg)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c.Run(runCtx, cfg.Tick)
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	slog.Info("coordinator: serving", "url", "https://"+ln.Addr().String(), "dir", dir, "db", cfg.DB,
		"key", protocol.EncodePublicKey(c.PublicKey()))
	fmt.Fprintf(cmd.OutOrStdout(), "coordinator listening on https://%s\n", ln.Addr())
	fmt.Fprintf(cmd.OutOrStdout(), "dashboard: open https://%s/ (live; the certificate is %s)\n", ln.Addr(), certNote(cfg.TLSCert, filepath.Join(dir, "tls.crt")))
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	case <-ctx.Done():
	}
	slog.Info("coordinator: shutting down")
	cancel()
	hub.Close() // end the dashboards' streams so Shutdown need not wait for them
	shCtx, shCancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer shCancel()
	if err := srv.Shutdown(shCtx); err != nil {
		srv.Close()
	}
	if err := c.SaveMetrics(shCtx); err != nil {
		slog.Warn("coordinator: saving the metrics' counters", "err", err)
	}
	return nil
}

// certNote says which certificate a browser must trust for the dashboard.
func certNote(operatorCert, selfSigned string) string {
	if operatorCert != "" {
		return operatorCert
	}
	return "self-signed, " + selfSigned + ": trust it in the browser or pass tls_cert/tls_key"
}

// baseShapes fills rounds.shapes for a Hugging Face base folder: the
// adapters the workers' preset (rounds.model) puts on that model. Shapes an
// operator's file gives must be the same; an embedded preset's (written for
// the tiny demo model) give way.
func baseShapes(cfg *coordinatorConfig, preset bool) error {
	if st, err := os.Stat(cfg.BaseModel); err != nil || !st.IsDir() {
		return nil // a file, or nothing: coordinator.New reports a missing one
	}
	mc, _, err := train.ReadHFConfig(cfg.BaseModel)
	if err != nil {
		return err
	}
	var tc train.Config
	if err := loadConfig(cfg.Rounds.Model, pflag.NewFlagSet("preset", pflag.ContinueOnError), nil, &tc); err != nil {
		return fmt.Errorf("rounds.model: %w", err)
	}
	shapes := netclient.AdapterShapes(mc, tc.LoRA)
	if len(cfg.Rounds.Shapes) == 0 || preset {
		cfg.Rounds.Shapes = shapes
		return nil
	}
	if err := netclient.SameShapes(cfg.Rounds.Shapes, shapes); err != nil {
		return fmt.Errorf("rounds.shapes do not fit base %s with the LoRA settings of %q: %w", cfg.BaseModel, cfg.Rounds.Model, err)
	}
	return nil
}
