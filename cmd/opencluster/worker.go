package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/opencluster/opencluster/device"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
	"github.com/opencluster/opencluster/train/backend"
	"github.com/shirou/gopsutil/v3/disk"
	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(newWorkerCmd()) }

func newWorkerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "worker --coordinator URL --data DIR",
		Short: "Lend this machine to a federated run: train on your private data, send compressed updates",
		Long: `worker joins a coordinator's federated rounds. It only makes outbound
connections (it works behind a home router): it registers an ed25519 key made
on first run, long-polls for a round, downloads the base model and the global
adapter (cached by SHA-256, resumable), trains the adapter for a few steps on
the text under --data (which never leaves this machine), and uploads the
compressed, signed change. Interrupted uploads are resent after a restart.

Trust: https coordinators with a self-signed certificate need --ca FILE (the
certificate) or --pin SHA256 (its fingerprint); --insecure is accepted only
for a loopback coordinator.`,
		Args: cobra.NoArgs,
		RunE: runWorker,
	}
	f := cmd.Flags()
	f.String("coordinator", "", "coordinator URL, e.g. https://coord.example:8443")
	f.String("data", "", "directory of your text files (read recursively; never uploaded)")
	f.String("state", "", "state directory: key, cache, error-feedback state (default: the user config dir's opencluster/worker)")
	f.String("config", "worker", "worker config (device and budget sections): a YAML file or the embedded preset name")
	f.Bool("json", false, "print one JSON status object per event on stdout")
	f.String("ca", "", "PEM certificate to trust for the coordinator (its self-signed certificate)")
	f.String("pin", "", "SHA-256 fingerprint of the coordinator's certificate (hex)")
	f.Bool("insecure", false, "skip certificate checks (loopback coordinators only)")
	f.String("name", "", "display name sent at registration")
	f.String("join-token", "", "the coordinator operator's join token (better: join_token in --config or OPENCLUSTER_JOIN_TOKEN, which other users cannot see in ps)")
	f.String("region", "", "opt in to being shown on the dashboard's globe in this country (ISO 3166-1 alpha-2, e.g. DE); never looked up from your address")
	f.Int("threads", 0, "CPU threads for training; 0 uses every core")
	f.Int("rounds", 0, "stop after this many rounds (0: run until interrupted)")
	f.Duration("idle-exit", 0, "stop after this long without work (0: never)")
	f.Duration("poll", 30*time.Second, "longest wait of one poll for work")
	return cmd
}

func runWorker(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	coord, _ := f.GetString("coordinator")
	dataDir, _ := f.GetString("data")
	stateDir, _ := f.GetString("state")
	cfgSrc, _ := f.GetString("config")
	jsonOut, _ := f.GetBool("json")
	ca, _ := f.GetString("ca")
	pin, _ := f.GetString("pin")
	insecure, _ := f.GetBool("insecure")
	name, _ := f.GetString("name")
	region, _ := f.GetString("region")
	threads, _ := f.GetInt("threads")
	rounds, _ := f.GetInt("rounds")
	idle, _ := f.GetDuration("idle-exit")
	poll, _ := f.GetDuration("poll")
	if coord == "" {
		return errors.New("--coordinator is required: the coordinator's URL")
	}
	if dataDir == "" {
		return errors.New("--data is required: a directory of your text files")
	}
	if r, ok, err := protocol.LookupRegion(region); err != nil {
		return fmt.Errorf("--region: %w", err)
	} else if ok {
		region = r.Code
	}
	if stateDir == "" {
		d, err := os.UserConfigDir()
		if err != nil {
			return fmt.Errorf("no --state given and no user config directory: %w", err)
		}
		stateDir = filepath.Join(d, "opencluster", "worker")
	}
	wcfg := defaultWorkerConfig()
	if err := loadConfig(cfgSrc, f, map[string]string{"join_token": "join-token"}, &wcfg); err != nil {
		return err
	}
	if err := wcfg.Validate(); err != nil {
		return fmt.Errorf("config %s: %w", cfgSrc, err)
	}
	// Rounds train on the dispatched device (--device, as for train): the
	// CUDA backend on a GPU in opencluster-cuda, else the CPU. The budget
	// watches that device's sensors (NVML on a GPU).
	be, err := commandBackend(cmd, threads)
	if err != nil {
		return err
	}
	gov, err := newGovernor(wcfg, be.Name(), slog.Default())
	if err != nil {
		return err
	}
	defer func() { slog.Info(gov.Summary()); gov.Close() }()
	hc, err := netclient.NewHTTPClient(coord, netclient.TLSOptions{CAFile: ca, Pin: pin, Insecure: insecure})
	if err != nil {
		return err
	}
	if n, ok := os.LookupEnv(stallUploadEnv); ok {
		if err := stallUploads(hc, n); err != nil {
			return err
		}
	}
	if v, ok := os.LookupEnv(haltSecureStageEnv); ok {
		if err := haltSecureStage(hc, v); err != nil {
			return err
		}
	}
	st, err := netclient.OpenState(stateDir)
	if err != nil {
		return err
	}
	if v, ok := os.LookupEnv(poisonUpdatesEnv); ok {
		if err := poisonUploads(hc, v, st.Key); err != nil {
			return err
		}
	}
	limits := wcfg.Limits
	if limits.MaxMemoryBytes == 0 {
		if _, onGPU := gpuIndex(be.Name()); onGPU {
			// What the card has free now, minus a margin (NVML).
			b, src, err := maxMemory(cmd.Context(), "auto", be.Name())
			if err != nil {
				return err
			}
			limits.MaxMemoryBytes = b
			slog.Info("memory budget", "bytes", b, "from", src)
		} else if m, err := (device.HostCPU{}).Memory(cmd.Context()); err == nil {
			// Half of this machine's memory: a round's training must leave
			// the owner the rest.
			limits.MaxMemoryBytes = int64(m.Total / 2)
		}
	}
	var rep netclient.Reporter = netclient.LogReporter{Logger: slog.Default()}
	if jsonOut {
		rep = netclient.NewJSONReporter(cmd.OutOrStdout())
	}
	w, err := netclient.New(netclient.Options{
		Coordinator: coord, HTTP: hc, DataDir: dataDir, State: st, Name: name, Region: region, JoinToken: wcfg.JoinToken,
		Limits: limits, FreeBytes: freeBytes,
		Device: describeBackend(be), Version: version, Backend: be,
		LoadConfig: func(model string) (train.Config, error) {
			var c train.Config
			err := loadModelConfig(model, f, nil, &c)
			return c, err
		},
		Threads: threads, Governor: gov, Energy: energyMeter(wcfg.Device.PowercapRoot), Reporter: rep, Logger: slog.Default(),
		PollWait: poll, MaxRounds: rounds, IdleExit: idle,
	})
	if err != nil {
		return err
	}
	defer w.Close()
	err = w.Run(cmd.Context())
	if errors.Is(err, cmd.Context().Err()) && err != nil {
		slog.Info("worker stopped", "state", stateDir)
		return nil
	}
	return err
}

// describeBackend is the device a worker registers with: the GPU's name
// or the CPU's core count.
func describeBackend(be backend.Backend) string {
	if g, ok := be.(interface{ DeviceName() string }); ok {
		return fmt.Sprintf("%s (%s)", g.DeviceName(), be.Name())
	}
	return fmt.Sprintf("cpu %d cores", runtime.NumCPU())
}

// cpuWattsPerCore is the power assumed per busy core when no meter is
// readable: a rough figure for a desktop core under load, reported as an
// estimate (energy_measured false), never as a measurement.
const cpuWattsPerCore = 12.0

// energyMeter returns the worker's energy meter: the CPU package's RAPL
// counter when it is readable, else an estimate from this process's CPU
// time.
func energyMeter(powercapRoot string) func() (float64, bool) {
	r := &device.RAPL{Root: powercapRoot}
	if _, err := r.EnergyJ(); err == nil {
		return func() (float64, bool) {
			j, err := r.EnergyJ()
			return j, err == nil
		}
	}
	return func() (float64, bool) {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0, false
		}
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		return cpu.Seconds() * cpuWattsPerCore, false
	}
}

// freeBytes is the free space of the file system holding path.
func freeBytes(path string) (uint64, error) {
	u, err := disk.Usage(path)
	if err != nil {
		return 0, err
	}
	return u.Free, nil
}
