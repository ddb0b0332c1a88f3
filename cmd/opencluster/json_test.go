package main

import (
	"reflect"
	"testing"

	"github.com/opencluster/opencluster/bench"
	"github.com/opencluster/opencluster/device"
	"github.com/opencluster/opencluster/device/budget"
	"github.com/opencluster/opencluster/internal/jsondoc"
	"github.com/opencluster/opencluster/netclient"
	"github.com/opencluster/opencluster/protocol"
	"github.com/opencluster/opencluster/sim"
)

// Every field the commands print with --json is named in docs/json.md,
// where one name has one meaning (train's lines are checked in train/).
func TestJSONOutputIsDocumented(t *testing.T) {
	missing, err := jsondoc.Undocumented("../../docs/json.md", reflect.TypeOf(netclient.Event{}), reflect.TypeOf(demoRound{}),
		reflect.TypeOf(evalOutput{}), reflect.TypeOf(device.Report{}), reflect.TypeOf(bench.Row{}), reflect.TypeOf(budget.SimResult{}),
		reflect.TypeOf(protocol.RoundSummary{}), reflect.TypeOf(sim.Result{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range missing {
		t.Errorf("%s is printed with --json but docs/json.md does not name it", m)
	}
}
