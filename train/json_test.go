package train

import (
	"reflect"
	"testing"

	"github.com/opencluster/opencluster/internal/jsondoc"
)

// train --json's fields are the ones docs/json.md names.
func TestJSONOutputIsDocumented(t *testing.T) {
	missing, err := jsondoc.Undocumented("../docs/json.md", reflect.TypeOf(jsonEvent{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range missing {
		t.Errorf("%s is printed by train --json but docs/json.md does not name it", m)
	}
}
