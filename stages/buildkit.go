package stages

import (
	"encoding/base64"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// vertex is one step of a BuildKit build, as its trace messages report it.
type vertex struct {
	name      string
	cached    bool
	completed bool
	err       string
}

// decodeTrace reads the vertexes out of a "moby.buildkit.trace" aux message,
// a base64 protobuf StatusResponse (field 1: repeated Vertex; Vertex fields
// 3 name, 4 cached, 6 completed, 7 error). Decoding these few fields by hand
// spares the build the whole BuildKit module.
func decodeTrace(aux json.RawMessage) ([]vertex, error) {
	var b64 string
	if err := json.Unmarshal(aux, &b64); err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, err
	}
	var out []vertex
	err = eachField(raw, func(num protowire.Number, typ protowire.Type, val []byte, _ uint64) error {
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		var v vertex
		err := eachField(val, func(num protowire.Number, typ protowire.Type, val []byte, n uint64) error {
			switch {
			case num == 3 && typ == protowire.BytesType:
				v.name = string(val)
			case num == 4 && typ == protowire.VarintType:
				v.cached = n != 0
			case num == 6 && typ == protowire.BytesType:
				v.completed = true
			case num == 7 && typ == protowire.BytesType:
				v.err = string(val)
			}
			return nil
		})
		out = append(out, v)
		return err
	})
	return out, err
}

// eachField calls f for each top-level field of a protobuf message.
func eachField(b []byte, f func(protowire.Number, protowire.Type, []byte, uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("bad protobuf tag")
		}
		b = b[n:]
		var val []byte
		var u uint64
		switch typ {
		case protowire.BytesType:
			val, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			u, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("bad protobuf field %d", num)
		}
		b = b[n:]
		if err := f(num, typ, val, u); err != nil {
			return err
		}
	}
	return nil
}
