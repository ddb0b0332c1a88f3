package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// BaseFile is one file of a Hugging Face base folder a round names: the
// worker downloads the blob SHA256 (Bytes long) and saves it as Name.
type BaseFile struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// MaxBaseFiles bounds the files of a base folder.
const MaxBaseFiles = 256

// BaseManifest is the canonical text of a base folder: a version line, then
// one line per file sorted by name, "<sha256> <bytes> <name>". Its SHA-256
// is the folder's identity (RoundInfo.BaseSHA256), so one hash names every
// file of the base and updates stay bound to it.
func BaseManifest(files []BaseFile) []byte {
	sorted := append([]BaseFile(nil), files...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var b strings.Builder
	b.WriteString("opencluster base v1\n")
	for _, f := range sorted {
		fmt.Fprintf(&b, "%s %d %s\n", f.SHA256, f.Bytes, f.Name)
	}
	return []byte(b.String())
}

// BaseFolderSHA256 is the hex SHA-256 of BaseManifest(files).
func BaseFolderSHA256(files []BaseFile) string {
	sum := sha256.Sum256(BaseManifest(files))
	return hex.EncodeToString(sum[:])
}

// CheckBaseFiles refuses a file list a worker must not act on: names that
// are not plain file names (a path, "..", a hidden or odd name), repeated
// names, hashes that are not lowercase hex SHA-256, negative sizes, no
// config.json, more than MaxBaseFiles files, or a tokenizer hash that is
// not the hash of the list's tokenizer.json.
func CheckBaseFiles(files []BaseFile, tokenizerSHA256 string) error {
	if len(files) > MaxBaseFiles {
		return fmt.Errorf("protocol: base folder of %d files; at most %d", len(files), MaxBaseFiles)
	}
	seen := map[string]bool{}
	tokenizer := ""
	for _, f := range files {
		if !plainName(f.Name) {
			return fmt.Errorf("protocol: base file name %q: want a plain file name of letters, digits, '.', '-' and '_'", f.Name)
		}
		if seen[f.Name] {
			return fmt.Errorf("protocol: base file %s listed twice", f.Name)
		}
		seen[f.Name] = true
		if !isHexSHA256(f.SHA256) || f.Bytes < 0 {
			return fmt.Errorf("protocol: base file %s: hash %q or size %d is malformed", f.Name, f.SHA256, f.Bytes)
		}
		if f.Name == "tokenizer.json" {
			tokenizer = f.SHA256
		}
	}
	if len(files) > 0 && !seen["config.json"] {
		return errors.New("protocol: the base folder has no config.json")
	}
	if tokenizerSHA256 != tokenizer {
		return fmt.Errorf("protocol: tokenizer_sha256 %q is not the base folder's tokenizer.json (%q)", tokenizerSHA256, tokenizer)
	}
	return nil
}

func plainName(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '.' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}
