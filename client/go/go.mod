module modelreg/client

// What a build with a module proxy starts from: `go mod tidy` adds
// google.golang.org/genproto (which grpc selects) and writes go.sum.
// scripts/polyglot.sh builds offline instead, in GOPATH mode against Debian's
// golang-google-grpc-dev (1.33.3), golang-google-protobuf-dev (1.28.1) and
// golang-google-genproto-dev.
go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
