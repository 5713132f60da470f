//go:build !linux

package proxy

import (
	"errors"
	"syscall"
)

func setFreebind(string, syscall.RawConn) error {
	return errors.New("freebind is supported on Linux only")
}
