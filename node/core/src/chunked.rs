//! A growable array that never moves what it holds.
//!
//! A region's orders only grow, and a `Vec` grows by copying everything into a buffer twice
//! the size: at 130,000 orders that is a 17 MB copy plus fresh pages, a 40 ms pause in the
//! middle of an on-sale, measured by `allot bench http`. Fixed-size chunks make every push
//! cost the same, and the price is one extra index computation per lookup.

use std::fmt;

/// Elements per chunk: big enough that the list of chunks stays small, small enough that
/// allocating one is never noticed.
const CHUNK: usize = 4096;

pub struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.iter_from(0)
    }

    /// Elements from index `start` on, without walking the ones before it.
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> {
        let first = start / CHUNK;
        self.chunks
            .get(first..)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .flat_map(move |(c, chunk)| {
                let skip = if c == 0 { start % CHUNK } else { 0 };
                chunk.get(skip..).unwrap_or_default()
            })
    }
}

impl<T: fmt::Debug> fmt::Debug for ChunkedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_iterates_across_chunk_boundaries() {
        let mut v = ChunkedVec::default();
        let n = 3 * CHUNK + 7;
        for i in 0..n {
            v.push(i);
        }
        assert_eq!(v.len(), n);
        assert!(
            v.chunks.iter().all(|c| c.capacity() == CHUNK),
            "a chunk never grows, so nothing is ever copied"
        );
        assert_eq!(v.get(CHUNK - 1), Some(&(CHUNK - 1)));
        assert_eq!(v.get(CHUNK), Some(&CHUNK));
        assert_eq!(v.get(n), None);
        *v.get_mut(2 * CHUNK).expect("in range") = 0;
        assert_eq!(v.get(2 * CHUNK), Some(&0));
        assert_eq!(v.iter().count(), n);
        for start in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, n - 1, n, n + 5] {
            let expected: Vec<usize> = (start.min(n)..n)
                .map(|i| if i == 2 * CHUNK { 0 } else { i })
                .collect();
            assert_eq!(
                v.iter_from(start).copied().collect::<Vec<_>>(),
                expected,
                "from {start}"
            );
        }
    }
}
