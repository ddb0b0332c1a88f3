package protocol

import (
	"strings"
	"testing"
)

func TestLookupRegion(t *testing.T) {
	for _, tc := range []struct {
		code           string
		want           string
		latMin, latMax float64
		lonMin, lonMax float64
	}{
		{"de", "DE", 47, 55, 6, 15},      // Germany
		{"FR", "FR", 42, 51, -5, 8},      // metropolitan France, not pulled towards French Guiana
		{"br", "BR", -30, 0, -70, -35},   // Brazil
		{"NZ", "NZ", -47, -34, 166, 179}, // New Zealand
		{"SG", "SG", 1, 2, 103, 105},     // small, but on the 1:50m map
	} {
		r, ok, err := LookupRegion(tc.code)
		if err != nil || !ok || r.Code != tc.want || r.Lat < tc.latMin || r.Lat > tc.latMax || r.Lon < tc.lonMin || r.Lon > tc.lonMax {
			t.Errorf("LookupRegion(%q) = %+v, %v, %v; want %s inside lat [%v,%v] lon [%v,%v]", tc.code, r, ok, err, tc.want, tc.latMin, tc.latMax, tc.lonMin, tc.lonMax)
		}
	}
	if _, ok, err := LookupRegion(""); ok || err != nil {
		t.Errorf(`LookupRegion("") = %v, %v; want no region and no error`, ok, err)
	}
	for _, bad := range []string{"XX", "DEU", "Germany", "d", "192.168.1.1"} {
		if _, _, err := LookupRegion(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("LookupRegion(%q): err %v, want an error naming the input", bad, err)
		}
	}
}
