package netclient

import (
	"fmt"

	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/train"
)

// Limits are what a worker refuses to do for any coordinator, whatever its
// round info asks: a coordinator must not be able to fill the volunteer's
// disk or memory. They are the worker config's limits section.
type Limits struct {
	// MaxDownloadBytes caps every blob download (base model, adapter), on
	// top of the size the signed round info declares.
	MaxDownloadBytes int64 `mapstructure:"max_download_bytes" json:"max_download_bytes"`
	// MaxMemoryBytes is the memory a round's training may need, by
	// RoundMemory's estimate; a recipe that needs more is refused.
	// 0: half of this machine's memory (the command fills it in).
	MaxMemoryBytes int64 `mapstructure:"max_memory_bytes" json:"max_memory_bytes"`
	// MinFreeDiskBytes is the disk space a download must leave free in
	// the state directory.
	MinFreeDiskBytes int64 `mapstructure:"min_free_disk_bytes" json:"min_free_disk_bytes"`
}

// DefaultLimits suit a desktop: a 7B model's 4-bit base is about 4 GB.
func DefaultLimits() Limits {
	return Limits{MaxDownloadBytes: 16 << 30, MinFreeDiskBytes: 1 << 30}
}

// Validate names the first bad key.
func (l Limits) Validate() error {
	switch {
	case l.MaxDownloadBytes < 1:
		return fmt.Errorf("limits.max_download_bytes = %d: want >= 1", l.MaxDownloadBytes)
	case l.MaxMemoryBytes < 0:
		return fmt.Errorf("limits.max_memory_bytes = %d: want >= 0 (0: half of this machine's memory)", l.MaxMemoryBytes)
	case l.MinFreeDiskBytes < 0:
		return fmt.Errorf("limits.min_free_disk_bytes = %d: want >= 0", l.MinFreeDiskBytes)
	}
	return nil
}

// downloadCap is the most bytes to accept for a blob the round info
// declares to have declared bytes (0: not declared).
func (l Limits) downloadCap(declared int64) (int64, error) {
	if declared > l.MaxDownloadBytes {
		return 0, &permanentError{fmt.Errorf("netclient: the round's blob is %d bytes, over this worker's limits.max_download_bytes %d", declared, l.MaxDownloadBytes)}
	}
	if declared > 0 {
		return declared, nil
	}
	return l.MaxDownloadBytes, nil
}

// planRecipe fits a round's training (batch sequences of seqLen tokens on
// cfg's model) into budget bytes with train.PlanMemory (micro-batch and
// activation checkpointing; on a GPU, AdamW moments on the host if need
// be), and refuses a recipe that cannot fit even so, naming its batch and
// the budget. budget 0: no plan, no check (nil plan).
func planRecipe(info protocol.RoundInfo, cfg train.Config, batch, seqLen int, budget int64, gpu bool) (*train.MemoryPlan, error) {
	if budget <= 0 {
		return nil, nil
	}
	job := train.MemoryJob{Model: cfg.Model, Mode: train.ModeQLoRA, LoRA: cfg.LoRA, Quant: cfg.Quant,
		MicroBatch: batch, SeqLen: seqLen, CUDA: gpu}
	plan, err := train.PlanMemory(job, budget, gpu)
	if err != nil {
		return nil, &permanentError{fmt.Errorf("netclient: round %d: recipe.batch_tokens %d (%d sequences of %d tokens) does not fit this worker's memory budget of %s (limits.max_memory_bytes): %w; refused",
			info.Round, info.Recipe.BatchTokens, batch, seqLen, humanBytes(float64(budget)), err)}
	}
	return &plan, nil
}

func humanBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
