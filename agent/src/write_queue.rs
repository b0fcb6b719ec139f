//! Frames waiting for a non-blocking socket, written oldest first in vectored writes: the
//! queue under a connection's answers (proxy/serve.rs) and an upstream channel's backlog
//! (upstream/channel.rs).
use std::collections::VecDeque;
use std::io::IoSlice;

/// Most frames in one vectored write.
pub const MAX_IOV: usize = 64;
/// A queue that grew past this many slots in a burst is not kept once it is empty.
const KEEP_CAPACITY: usize = 64;

/// A queued frame: its bytes, plus whatever it holds until it is written.
pub trait Frame {
    fn bytes(&self) -> &[u8];
}

/// Frames oldest first; the first may be partly written.
#[derive(Debug)]
pub struct WriteQueue<T> {
    frames: VecDeque<T>,
    /// Bytes of the first frame already written.
    written: usize,
}

impl<T> Default for WriteQueue<T> {
    fn default() -> Self {
        WriteQueue {
            frames: VecDeque::new(),
            written: 0,
        }
    }
}

impl<T: Frame> WriteQueue<T> {
    pub fn push(&mut self, frame: T) {
        self.frames.push_back(frame);
    }

    /// Queue `frame` of which the first `written` bytes already went out; the queue is empty
    /// (nothing may come between a frame's bytes).
    pub fn push_partial(&mut self, frame: T, written: usize) {
        debug_assert!(self.frames.is_empty());
        self.written = written;
        self.frames.push_back(frame);
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.written = 0;
    }

    /// Write through `write` (a socket's `try_write_vectored`) while it takes everything;
    /// a written frame is dropped, giving back what it holds. Ok(true) once the queue is
    /// empty, Ok(false) when the socket would block.
    pub fn write_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<bool> {
        while !self.frames.is_empty() {
            let r = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (slot, q) in iov.iter_mut().zip(self.frames.iter()) {
                    let b = q.bytes();
                    *slot = IoSlice::new(if n == 0 { &b[self.written..] } else { b });
                    n += 1;
                }
                write(&iov[..n])
            };
            match r {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(w) => self.advance(w),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if self.frames.capacity() > KEEP_CAPACITY {
            self.frames = VecDeque::new();
        }
        Ok(true)
    }

    /// `w` more bytes went out: drop the frames they complete.
    fn advance(&mut self, mut w: usize) {
        while let Some(front) = self.frames.front() {
            let left = front.bytes().len() - self.written;
            if w < left {
                self.written += w;
                return;
            }
            w -= left;
            self.frames.pop_front();
            self.written = 0;
            if w == 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Frame for Vec<u8> {
        fn bytes(&self) -> &[u8] {
            self
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = WriteQueue::default();
        q.push_partial(b"abcd".to_vec(), 1);
        q.push(b"efg".to_vec());
        q.push(b"hi".to_vec());
        // The socket takes 2 bytes, then 3, then would block; then everything.
        let out = std::cell::RefCell::new(Vec::new());
        let takes = std::cell::RefCell::new(vec![2usize, 3, 0].into_iter());
        let mut write = |iov: &[IoSlice<'_>]| {
            let take = takes.borrow_mut().next().unwrap_or(usize::MAX);
            if take == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for s in iov {
                let k = (take - n).min(s.len());
                out.borrow_mut().extend_from_slice(&s[..k]);
                n += k;
                if n == take {
                    break;
                }
            }
            Ok(n)
        };
        assert!(!q.write_with(&mut write).unwrap());
        assert_eq!(out.borrow().as_slice(), b"bcdef");
        assert_eq!(q.len(), 2);
        assert!(q.write_with(&mut write).unwrap());
        assert_eq!(out.borrow().as_slice(), b"bcdefghi");
        assert!(q.is_empty());
    }
}
