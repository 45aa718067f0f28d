package settings

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"
)

// Decode parses TOML and lays it over s (which holds the defaults, see
// overlay), then validates the result. Every error names the file and the
// line.
func Decode(path string, data []byte, s *Settings) error {
	var file Settings
	md, err := toml.Decode(string(data), &file)
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
	overlay(reflect.ValueOf(s).Elem(), reflect.ValueOf(&file).Elem(), md, nil)
	s.applyDeployDefaults()
	return withLines(path, data, s.Validate())
}

var (
	tableRe = regexp.MustCompile(`^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?`)
	keyRe   = regexp.MustCompile(`^\s*([A-Za-z0-9_.\-"' ]+?)\s*=`)
)

// keyLines maps dotted keys to the line that sets them; the N-th table of
// an array of tables is "name[N]" ("flows[1].branch"). TOML's decoder keeps
// key positions to itself, so this tracks table headers by hand; it only
// has to be right for keys that a parse already accepted.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	table, arrays := "", map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := tableRe.FindStringSubmatch(line); m != nil {
			table = unquote(m[2])
			if m[1] == "[[" {
				i := arrays[table]
				arrays[table]++
				if _, ok := lines[table]; !ok {
					lines[table] = n
				}
				table = fmt.Sprintf("%s[%d]", table, i)
			}
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
			// and without the index, for unknown-key errors
			if plain := indexRe.ReplaceAllString(key, ""); plain != key {
				if _, ok := lines[plain]; !ok {
					lines[plain] = n
				}
			}
		}
	}
	return lines
}

var indexRe = regexp.MustCompile(`\[\d+\]`)

func unquote(k string) string {
	parts := strings.Split(k, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}

// withLines puts the file and the line of its field before each of err's
// FieldErrors: the line that sets the key, else its table's; a value that
// comes from the defaults is named as such.
func withLines(path string, data []byte, err error) error {
	if err == nil {
		return nil
	}
	lines := keyLines(data)
	var out []error
	for _, e := range unjoin(err) {
		var fe *FieldError
		if !errors.As(e, &fe) {
			out = append(out, fmt.Errorf("%s: %w", path, e))
			continue
		}
		key := fe.Field
		for key != "" {
			if n, ok := lines[key]; ok {
				out = append(out, fmt.Errorf("%s:%d: %s: %s", path, n, fe.Field, fe.Msg))
				break
			}
			i := strings.LastIndexAny(key, ".[")
			if i < 0 {
				key = ""
				break
			}
			key = key[:i]
		}
		if key == "" {
			out = append(out, fmt.Errorf("%s: %s: %s (a built-in default: set it in the file)", path, fe.Field, fe.Msg))
		}
	}
	return errors.Join(out...)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// Annotate marks each value line of the effective settings (as `berth
// check` encodes them) with where it comes from: the file and line that
// set it, or "default".
func Annotate(encoded, path string, data []byte) string {
	keys := fileKeys(data)
	var b strings.Builder
	table, arrays := "", map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(encoded))
	for sc.Scan() {
		line := sc.Text()
		if m := tableRe.FindStringSubmatch(line); m != nil {
			table = unquote(m[2])
			if m[1] == "[[" {
				i := arrays[table]
				arrays[table]++
				table = fmt.Sprintf("%s[%d]", table, i)
			}
			b.WriteString(line + "\n")
			continue
		}
		m := keyRe.FindStringSubmatch(line)
		if m == nil || path == "" {
			b.WriteString(line + "\n")
			continue
		}
		key := unquote(m[1])
		if table != "" {
			key = table + "." + key
		}
		where := "default"
		for k := key; k != ""; {
			if n, ok := keys[k]; ok {
				where = fmt.Sprintf("%s:%d", path, n)
				break
			}
			i := strings.LastIndexAny(k, ".[")
			if i < 0 {
				break
			}
			k = k[:i]
		}
		fmt.Fprintf(&b, "%s  # %s\n", line, where)
	}
	return b.String()
}

// fileKeys are the keys a file sets with key = value lines (not its table
// headers), by dotted path, with their lines.
func fileKeys(data []byte) map[string]int {
	keys := map[string]int{}
	table, arrays := "", map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if m := tableRe.FindStringSubmatch(line); m != nil {
			table = unquote(m[2])
			if m[1] == "[[" {
				i := arrays[table]
				arrays[table]++
				table = fmt.Sprintf("%s[%d]", table, i)
				keys[table] = n // an array of tables is the file's as a whole
			}
			continue
		}
		if m := keyRe.FindStringSubmatch(line); m != nil {
			key := unquote(m[1])
			if table != "" {
				key = table + "." + key
			}
			if _, ok := keys[key]; !ok {
				keys[key] = n
			}
		}
	}
	return keys
}
