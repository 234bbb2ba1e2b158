package ctrd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// PruneLogs removes the IO directories of calls that have no container and
// were last written before cutoff, keeping at most keep directories. It is
// the retention policy for full logs; live calls are never touched.
func (r *Runtime) PruneLogs(ctx context.Context, cutoff time.Time, keep int) (int, error) {
	entries, err := os.ReadDir(r.ioRoot)
	if err != nil {
		return 0, fmt.Errorf("read IO root: %w", err)
	}
	live, err := r.containerIDs(ctx)
	if err != nil {
		return 0, err
	}
	type dir struct {
		name string
		mod  time.Time
	}
	var dead []dir
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), containerPrefix) || live[e.Name()] {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		dead = append(dead, dir{e.Name(), fi.ModTime()})
	}
	sort.Slice(dead, func(i, j int) bool { return dead[i].mod.After(dead[j].mod) })
	// A call that ran in a pre-started container has its directory by a
	// symlink (warm.go): it goes with the directory it names.
	defer func() {
		for _, e := range entries {
			if e.Type()&os.ModeSymlink == 0 || !strings.HasPrefix(e.Name(), containerPrefix) {
				continue
			}
			if _, err := os.Stat(filepath.Join(r.ioRoot, e.Name())); errors.Is(err, fs.ErrNotExist) {
				os.Remove(filepath.Join(r.ioRoot, e.Name()))
			}
		}
	}()
	removed := 0
	for i, d := range dead {
		if i < keep && d.mod.After(cutoff) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(r.ioRoot, d.name)); err != nil {
			return removed, fmt.Errorf("remove logs of %s: %w", d.name, err)
		}
		removed++
	}
	return removed, nil
}
