package settings

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"
)

// Decode parses TOML into s (which holds the defaults) and validates it.
// Every error names the file and, where TOML knows it, the line.
func Decode(path string, data []byte, s *Settings) error {
	md, err := toml.Decode(string(data), s)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		// type mismatches carry no position; name the file at least
		return fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		lines := keyLines(data)
		var errs []error
		reported := map[string]bool{}
		for _, k := range und {
			key := k.String()
			if len(k) > 1 && reported[k[:len(k)-1].String()] {
				continue // the unknown table is reported already
			}
			reported[key] = true
			errs = append(errs, fmt.Errorf("%s:%d: unknown key %q: remove it or check its spelling (berth check prints the known keys)", path, lines[key], key))
		}
		return errors.Join(errs...)
	}
	s.applyDeployDefaults()
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

var (
	tableRe = regexp.MustCompile(`^\s*\[\[?\s*([^\]]+?)\s*\]\]?`)
	keyRe   = regexp.MustCompile(`^\s*([A-Za-z0-9_.\-"' ]+?)\s*=`)
)

// keyLines maps dotted keys to the line that sets them. TOML's decoder keeps
// key positions to itself, so this tracks table headers by hand; it only has
// to be right for keys that a parse already accepted.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := tableRe.FindStringSubmatch(line); m != nil {
			table = unquote(m[1])
			if _, ok := lines[table]; !ok {
				lines[table] = n
			}
			continue
		}
		if m := keyRe.FindStringSubmatch(line); m != nil {
			key := unquote(m[1])
			if table != "" {
				key = table + "." + key
			}
			if _, ok := lines[key]; !ok {
				lines[key] = n
			}
		}
	}
	return lines
}

func unquote(k string) string {
	parts := strings.Split(k, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}
