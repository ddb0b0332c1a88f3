// Package sim simulates the volunteer network on a virtual clock: a
// seeded, deterministic discrete-event simulation (one event heap, no
// goroutine per node) of federated rounds over a population of up to
// millions of machines, driving the coordinator's own round logic
// (coordinator.Coordinator on a MemStore, InMemory, updates handed to
// Accept) rather than a copy of it.
//
// A population (population.go) is drawn from the tables in data/ (where
// people are, their graphics cards and PCs, each with its source) and
// from distributions for links, NAT, idle hours and owners' budgets, or
// read from a CSV trace (trace.go). Each node's round is a download of the
// global adapter (and the base model the first time), local training at
// FLOPs / (peak x utilisation), and an upload of the real codec's bytes,
// through its own links and through the organiser's (a data-center
// coordinator, or a volunteer drawn each round); energy is wall power
// times time, CO2 that times its country's grid intensity. The same seed
// gives the same output, byte for byte. docs/simulation.md has the model,
// its sources and its findings.
package sim
