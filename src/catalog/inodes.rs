//! `InodeTable`: inode numbers for names, stable across remounts.
//!
//! An inode number is a stable hash of the name's full key (the object key
//! of a file, the key prefix of a directory), so the same path gets the same
//! number in every mount of the same target without storing anything. The
//! rare collision moves the later name to the next free number.
//!
//! The table holds only what the kernel holds: each node counts the lookups
//! the kernel was sent for it (entry replies and readdirplus entries), and
//! goes when the kernel forgets them all, so the table follows the kernel's
//! inode cache instead of growing with every name ever listed.

use std::collections::HashMap;

use super::{Entry, Ino, ROOT_INO};
use crate::names;
use crate::stable_hash::stable_hash;

#[derive(Debug, Clone)]
pub struct Node {
    pub parent: Ino,
    pub name: String,
    pub is_dir: bool,
    /// Full object key of a file, or key prefix (ending in `/`) of a directory.
    pub key: String,
    /// Lookups the kernel holds (see the module docs).
    pub lookups: u64,
}

pub struct InodeTable {
    nodes: HashMap<Ino, Node>,
    by_name: HashMap<(Ino, String), Ino>,
}

impl InodeTable {
    pub fn new(root_prefix: &str) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                name: String::new(),
                is_dir: true,
                key: root_prefix.to_owned(),
                lookups: 1,
            },
        );
        InodeTable {
            nodes,
            by_name: HashMap::new(),
        }
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The inode of `entry` in directory `parent` (whose key prefix is
    /// `parent_prefix`), numbered on first sight.
    pub fn resolve(&mut self, parent: Ino, parent_prefix: &str, entry: &Entry) -> Ino {
        let is_dir = entry.is_dir();
        let map_key = (parent, entry.name.clone());
        let key = child_key(parent_prefix, entry);
        if let Some(&ino) = self.by_name.get(&map_key) {
            // The key is checked too: a number freed by FORGET and given to
            // another directory must not bring back names of the old one.
            if self
                .nodes
                .get(&ino)
                .is_some_and(|n| n.is_dir == is_dir && n.key == key)
            {
                return ino;
            }
        }
        let ino = self.free_number_for(&key);
        let lookups = self.nodes.get(&ino).map_or(0, |n| n.lookups);
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: entry.name.clone(),
                is_dir,
                key,
                lookups,
            },
        );
        self.by_name.insert(map_key, ino);
        ino
    }

    /// Counts one lookup of `entry` (numbered `ino`) in `parent`, sent to the
    /// kernel. A node forgotten since it was numbered comes back.
    pub fn remember(&mut self, parent: Ino, parent_prefix: &str, entry: &Entry, ino: Ino) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
            return;
        }
        // Forgotten between numbering and sending: back under exactly the
        // number that was sent (a renamed node's number is not its hash).
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: entry.name.clone(),
                is_dir: entry.is_dir(),
                key: child_key(parent_prefix, entry),
                lookups: 1,
            },
        );
        self.by_name.insert((parent, entry.name.clone()), ino);
    }

    /// The kernel forgot `n` lookups of `ino`; at none the node goes.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            self.forget_node(ino);
        }
    }

    fn forget_node(&mut self, ino: Ino) {
        if let Some(node) = self.nodes.remove(&ino) {
            let map_key = (node.parent, node.name);
            if self.by_name.get(&map_key) == Some(&ino) {
                self.by_name.remove(&map_key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Drops `ino` if the kernel holds no lookup of it: it was numbered
    /// for a readdir row that was not sent. Should another reply send it
    /// after all, [`InodeTable::remember`] brings it back under the same
    /// number.
    pub fn drop_unsent(&mut self, ino: Ino) {
        if self.nodes.get(&ino).is_some_and(|n| n.lookups == 0) {
            self.forget_node(ino);
        }
    }

    /// Forgets that `name` in `parent` has an inode (it was deleted). The
    /// node itself stays while the kernel may still hold its number.
    pub fn unlink(&mut self, parent: Ino, name: &str) {
        self.by_name.remove(&(parent, name.to_owned()));
    }

    /// Gives `ino` a new place and key; for a directory, the keys of every
    /// node below it move along.
    pub fn moved(&mut self, ino: Ino, new_parent: Ino, new_name: &str, new_key: String) {
        let Some(node) = self.nodes.get(&ino).cloned() else {
            return;
        };
        if self.by_name.get(&(node.parent, node.name.clone())) == Some(&ino) {
            self.by_name.remove(&(node.parent, node.name.clone()));
        }
        self.by_name.insert((new_parent, new_name.to_owned()), ino);
        if node.is_dir {
            for (other, n) in self.nodes.iter_mut() {
                if *other == ino || *other == ROOT_INO {
                    continue;
                }
                if let Some(rest) = n.key.strip_prefix(&node.key) {
                    n.key = format!("{new_key}{rest}");
                }
            }
        }
        let n = self.nodes.get_mut(&ino).expect("checked above");
        n.parent = new_parent;
        n.name = new_name.to_owned();
        n.key = new_key;
    }

    fn free_number_for(&self, key: &str) -> Ino {
        // 63 bits keep the number positive for tools that store it signed;
        // 0 and 1 (the root) are reserved.
        let mut ino = (stable_hash(key.as_bytes()) >> 1).max(ROOT_INO + 1);
        while let Some(existing) = self.nodes.get(&ino) {
            if existing.key == key {
                break;
            }
            ino = (ino + 1).max(ROOT_INO + 1) & (u64::MAX >> 1);
        }
        ino
    }
}

/// The full key of `entry` in the directory with key prefix `parent_prefix`.
fn child_key(parent_prefix: &str, entry: &Entry) -> String {
    if entry.is_dir() {
        names::child_dir_prefix(parent_prefix, &entry.name)
    } else {
        names::child_key(parent_prefix, &entry.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> Entry {
        Entry::test_file(name)
    }

    fn dir(name: &str) -> Entry {
        Entry::test_dir(name)
    }

    #[test]
    fn numbers_are_the_same_in_every_table() {
        let mut a = InodeTable::new("p/");
        let mut b = InodeTable::new("p/");
        let da = a.resolve(ROOT_INO, "p/", &dir("d"));
        let fa = a.resolve(da, "p/d/", &file("f"));
        // Another mount sees the names in another order.
        let db = b.resolve(ROOT_INO, "p/", &dir("d"));
        let fb = b.resolve(db, "p/d/", &file("f"));
        assert_eq!((da, fa), (db, fb));
        assert!(da > ROOT_INO && fa > ROOT_INO);
        assert_eq!(
            a.resolve(da, "p/d/", &file("f")),
            fa,
            "resolving again gives the same number"
        );
    }

    #[test]
    fn a_name_that_changes_kind_gets_another_number() {
        let mut t = InodeTable::new("");
        let f = t.resolve(ROOT_INO, "", &file("x"));
        let d = t.resolve(ROOT_INO, "", &dir("x"));
        assert_ne!(f, d);
        assert!(t.get(d).unwrap().is_dir);
        assert_eq!(t.get(d).unwrap().key, "x/");
    }

    #[test]
    fn a_moved_directory_takes_its_children_along() {
        let mut t = InodeTable::new("");
        let d = t.resolve(ROOT_INO, "", &dir("a"));
        let f = t.resolve(d, "a/", &file("f"));
        let e = t.resolve(ROOT_INO, "", &dir("e"));
        t.moved(d, e, "b", "e/b/".into());
        assert_eq!(t.get(d).unwrap().key, "e/b/");
        assert_eq!(t.get(f).unwrap().key, "e/b/f");
        assert_eq!(t.get(f).unwrap().parent, d);
        assert_eq!(t.resolve(e, "e/", &dir("b")), d, "found under the new name");
        assert_ne!(
            t.resolve(ROOT_INO, "", &dir("a")),
            d,
            "not under the old one"
        );
    }

    #[test]
    fn nodes_go_when_the_kernel_forgets_every_lookup() {
        let mut t = InodeTable::new("");
        let d = t.resolve(ROOT_INO, "", &dir("d"));
        t.remember(ROOT_INO, "", &dir("d"), d);
        let f = t.resolve(d, "d/", &file("f"));
        t.remember(d, "d/", &file("f"), f);
        t.remember(d, "d/", &file("f"), f);
        assert_eq!(t.len(), 3);
        t.forget(f, 1);
        assert!(t.get(f).is_some(), "one lookup is still held");
        t.forget(f, 1);
        assert!(t.get(f).is_none());
        assert_eq!(
            t.resolve(d, "d/", &file("f")),
            f,
            "same number when seen again"
        );
        t.forget(ROOT_INO, 100);
        assert!(t.get(ROOT_INO).is_some(), "the root stays");
        // Forgotten between numbering and the count: it comes back.
        let g = t.resolve(d, "d/", &file("g"));
        t.forget(g, 1);
        t.nodes.remove(&g);
        t.remember(d, "d/", &file("g"), g);
        assert_eq!(t.get(g).unwrap().lookups, 1);
    }

    #[test]
    fn a_reused_number_does_not_bring_back_the_old_directory_s_names() {
        let mut t = InodeTable::new("");
        let d = t.resolve(ROOT_INO, "", &dir("D"));
        let x = t.resolve(d, "D/", &file("x"));
        t.moved(d, ROOT_INO, "D2", "D2/".into());
        t.forget(d, 1);
        t.nodes.remove(&d); // forgotten, as the kernel would
        let again = t.resolve(ROOT_INO, "", &dir("D"));
        assert_eq!(again, d, "a new `D` gets the freed number");
        let new_x = t.resolve(again, "D/", &file("x"));
        assert_ne!(new_x, x, "the old `D/x` (now `D2/x`) is not reused");
        assert_eq!(t.get(new_x).unwrap().key, "D/x");
    }

    #[test]
    fn collisions_move_to_the_next_free_number() {
        let mut t = InodeTable::new("");
        let taken = (stable_hash(b"a") >> 1).max(2);
        t.nodes.insert(
            taken,
            Node {
                parent: ROOT_INO,
                name: "other".into(),
                is_dir: false,
                key: "other".into(),
                lookups: 1,
            },
        );
        let ino = t.resolve(ROOT_INO, "", &file("a"));
        assert_eq!(ino, taken + 1);
    }
}
