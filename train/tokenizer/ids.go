package tokenizer

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// ParseIDs reads token ids written as a JSON array ("[1, 2, 3]") or as
// integers separated by whitespace or commas, as `opencluster tokenize`
// prints them.
func ParseIDs(s string) ([]int32, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		var ids []int32
		if err := json.Unmarshal([]byte(s), &ids); err != nil {
			return nil, fmt.Errorf("token ids: %w", err)
		}
		return ids, nil
	}
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' || r == '\r' })
	ids := make([]int32, 0, len(fields))
	for i, f := range fields {
		v, err := strconv.ParseInt(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("token ids: item %d %q is not an integer", i, f)
		}
		ids = append(ids, int32(v))
	}
	return ids, nil
}
