package protocol

import (
	"fmt"
	"strings"
)

// Region is a country a volunteer may choose to be shown in on the
// dashboard (`worker --region CC`). It is coarse on purpose: the centre of
// the country, never a location derived from an address.
type Region struct {
	Code     string  // ISO 3166-1 alpha-2, upper case
	Name     string  // English short name
	Lat, Lon float64 // the centre of the country's largest land mass, to 0.1 degree
}

// LookupRegion returns the region for an ISO 3166-1 alpha-2 code (any
// case). An empty code is no region (ok false, no error); an unknown one
// is an error that says what is wanted.
func LookupRegion(code string) (r Region, ok bool, err error) {
	if code == "" {
		return Region{}, false, nil
	}
	r, ok = regions[strings.ToUpper(code)]
	if !ok {
		return Region{}, false, fmt.Errorf("region %q: want an ISO 3166-1 alpha-2 country code such as DE, BR or IN (one of %d on the dashboard's map)", code, len(regions))
	}
	return r, true, nil
}
