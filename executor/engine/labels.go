package engine

// LabelRole says what a container berth made is for: a job's container,
// its helper, a service, an environment's anchor.
const LabelRole = "berth.role"
