package modelreg

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// FieldViolation is one bad field of a request: its path (`name`,
// `source.commit`) and why.
type FieldViolation struct {
	Field       string
	Description string
}

// FieldViolations returns every field violation of the google.rpc.BadRequest
// that the server attaches to INVALID_ARGUMENT (AIP-193), in the server's
// order; nil when err carries none. Other details (PreconditionFailure,
// ResourceInfo) are in status.Convert(err).Details().
func FieldViolations(err error) []FieldViolation {
	var out []FieldViolation
	for _, detail := range status.Convert(err).Details() {
		if bad, ok := detail.(*errdetails.BadRequest); ok {
			for _, v := range bad.GetFieldViolations() {
				out = append(out, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		}
	}
	return out
}
