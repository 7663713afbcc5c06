//! The referred objects of one stream, whatever runs them: their ids and limit ([`ObjectTable`]), and
//! what an object command does to them ([`apply_command`] over any [`ObjectSet`]). The host path's
//! [`MultiStream`](crate::pipeline::multi::MultiStream) and the device-resident session keep their
//! per-object state in an `ObjectTable` and take commands through `apply_command`, so ids, limits and
//! errors are the same on both paths by construction.

use crate::error::{Error, Result};
use crate::pipeline::commands::{split_prompts, Command, ObjectId};

/// The table reads as the slice of its objects, ascending id.
impl<T> std::ops::Deref for ObjectTable<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items
    }
}

/// Writable objects, in place (a caller must not change their ids).
impl<T> std::ops::DerefMut for ObjectTable<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.items
    }
}

/// Per-object state that knows its id.
pub trait Keyed {
    /// The object's id.
    fn id(&self) -> ObjectId;
}

/// A stream's objects in ascending id order, at most `max` of them.
#[derive(Debug, Clone)]
pub struct ObjectTable<T> {
    items: Vec<T>,
    max: usize,
    /// Where the search for an assigned id starts: one past the highest id given out, so a removed
    /// object's id is not handed to the next object while unused ids remain (a consumer that keys
    /// its state by id never mistakes a new object for a removed one).
    next_auto: ObjectId,
}

impl<T: Keyed> ObjectTable<T> {
    /// An empty table taking at most `max` objects (at least 1).
    pub fn new(max: usize) -> Result<Self> {
        if max == 0 {
            return Err(Error::Config("max objects must be at least 1".into()));
        }
        Ok(ObjectTable {
            items: Vec::with_capacity(max),
            max,
            next_auto: 0,
        })
    }

    /// Most objects the table takes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True without objects.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Position of object `id`.
    pub fn find(&self, id: ObjectId) -> Option<usize> {
        self.items.iter().position(|o| o.id() == id)
    }

    /// Object `id`.
    pub fn get(&self, id: ObjectId) -> Option<&T> {
        self.find(id).map(|i| &self.items[i])
    }

    /// Object `id`, or the error naming the ids there are.
    pub fn get_mut(&mut self, id: ObjectId) -> Result<&mut T> {
        match self.find(id) {
            Some(i) => Ok(&mut self.items[i]),
            None => Err(self.unknown(id)),
        }
    }

    /// The error for an unknown id, naming the ids there are.
    pub fn unknown(&self, id: ObjectId) -> Error {
        let ids: Vec<String> = self.items.iter().map(|o| o.id().to_string()).collect();
        Error::Config(format!("no object {id} (objects: [{}])", ids.join(", ")))
    }

    /// The error for a full table.
    pub fn limit_error(&self) -> Error {
        Error::Config(format!(
            "object limit reached: this stream takes at most {} objects (max_objects); remove one first",
            self.max
        ))
    }

    /// The id a new object gets: `id` if free, else the first id not in use at or after the
    /// automatic start (wrapping around once the id space is used). Errors, changing nothing: `id`
    /// is in use, or the table is full.
    pub fn claim(&self, id: Option<ObjectId>) -> Result<ObjectId> {
        if let Some(i) = id {
            if self.find(i).is_some() {
                return Err(Error::Config(format!(
                    "object {i} already exists; use replace to change its prompt"
                )));
            }
        }
        if self.items.len() >= self.max {
            return Err(self.limit_error());
        }
        match id {
            Some(i) => Ok(i),
            None => (self.next_auto..=ObjectId::MAX)
                .chain(0..self.next_auto)
                .find(|i| self.find(*i).is_none())
                .ok_or_else(|| Error::Config("no free object id".into())),
        }
    }

    /// Inserts an object whose id came from [`ObjectTable::claim`].
    pub fn insert(&mut self, o: T) {
        let id = o.id();
        let at = self.items.partition_point(|x| x.id() < id);
        self.items.insert(at, o);
        self.next_auto = self.next_auto.max(id.saturating_add(1));
    }

    /// Removes object `id`.
    pub fn remove(&mut self, id: ObjectId) -> Result<T> {
        match self.find(id) {
            Some(i) => Ok(self.items.remove(i)),
            None => Err(self.unknown(id)),
        }
    }

    /// Checks that `n` objects fit (for [`ObjectTable::replace_all`], before building them).
    pub fn check_count(&self, n: usize) -> Result<()> {
        if n > self.max {
            return Err(Error::Config(format!(
                "{n} prompts but this stream takes at most {} objects (max_objects)",
                self.max
            )));
        }
        Ok(())
    }

    /// Replaces every object by `objects`, whose ids must be 0, 1, … (as a prompt command gives).
    pub fn replace_all(&mut self, objects: impl IntoIterator<Item = T>) -> Result<()> {
        let objects: Vec<T> = objects.into_iter().collect();
        self.check_count(objects.len())?;
        self.items.clear();
        self.items.extend(objects);
        self.next_auto = self.items.len() as ObjectId;
        Ok(())
    }

    /// Drops every object (the automatic ids go on from where they were).
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Where the search for the next assigned id starts (one past the highest id given out, or
    /// what [`ObjectTable::resume_ids_at`] set).
    pub fn next_id(&self) -> ObjectId {
        self.next_auto
    }

    /// Makes the next assigned id search start at `next`, so a table rebuilt from another one's
    /// objects assigns the ids that one would (a camera joining late gets the ids the others use).
    pub fn resume_ids_at(&mut self, next: ObjectId) {
        self.next_auto = next;
    }
}

/// A stream's objects as commands change them: implemented by the host path and the device path.
/// Each call changes nothing when it fails.
pub trait ObjectSet {
    /// Number of objects.
    fn len(&self) -> usize;
    /// True without objects.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Most objects the stream takes.
    fn max_objects(&self) -> usize;
    /// The objects' ids, ascending.
    fn ids(&self) -> Vec<ObjectId>;
    /// Encodes `prompt` (cached), so a later add or replace of it cannot fail on the text.
    fn check_prompt(&mut self, prompt: &str) -> Result<()>;
    /// Replaces every object by one per prompt (ids 0, 1, …), all or nothing.
    fn set_prompts(&mut self, prompts: &[&str]) -> Result<()>;
    /// Drops every object.
    fn clear(&mut self) -> Result<()>;
    /// Adds an object (id `id`, or the next automatic one) and returns its id.
    fn add(&mut self, id: Option<ObjectId>, prompt: &str) -> Result<ObjectId>;
    /// Removes object `id`.
    fn remove(&mut self, id: ObjectId) -> Result<()>;
    /// Gives object `id` a new prompt (its tracking starts afresh, its id stays).
    fn replace(&mut self, id: ObjectId, prompt: &str) -> Result<()>;
    /// Makes the next assigned id search start at `next` ([`ObjectTable::resume_ids_at`]).
    fn resume_ids_at(&mut self, next: ObjectId);
}

/// Applies an object command (`prompt`, `clear`, `add`, `remove`, `replace`; others change nothing)
/// and returns the ids it added. A refused command changes nothing.
pub fn apply_command<S: ObjectSet + ?Sized>(s: &mut S, command: &Command) -> Result<Vec<ObjectId>> {
    let mut added = Vec::new();
    if let Command::Prompt { prompt }
    | Command::Add { prompt, .. }
    | Command::Replace { prompt, .. } = command
    {
        if split_prompts(prompt).next().is_none() {
            return Err(Error::Text("prompt is empty".into()));
        }
    }
    match command {
        Command::Prompt { prompt } => {
            let ps: Vec<&str> = split_prompts(prompt).collect();
            s.set_prompts(&ps)?;
            added.extend(s.ids());
        }
        Command::Clear => s.clear()?,
        Command::Add { prompt, object } => {
            let ps: Vec<&str> = split_prompts(prompt).collect();
            if ps.len() > 1 && object.is_some() {
                return Err(Error::Config(format!(
                    "\"object\" names one object but the prompt holds {} (separated by ';')",
                    ps.len()
                )));
            }
            if s.len() + ps.len() > s.max_objects() {
                return Err(Error::Config(format!(
                    "object limit reached: this stream holds {} of at most {} objects (max_objects); adding {} is refused",
                    s.len(),
                    s.max_objects(),
                    ps.len()
                )));
            }
            // Encode every prompt first, so a bad one adds nothing.
            for p in &ps {
                s.check_prompt(p)?;
            }
            for p in ps {
                added.push(s.add(*object, p)?);
            }
        }
        Command::Remove { object } => s.remove(*object)?,
        Command::Replace { object, prompt } => {
            let ps: Vec<&str> = split_prompts(prompt).collect();
            if ps.len() != 1 {
                return Err(Error::Config(format!(
                    "replace takes one prompt, got {} (separated by ';')",
                    ps.len()
                )));
            }
            s.replace(*object, ps[0])?;
        }
        _ => {}
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Obj {
        id: ObjectId,
        prompt: String,
    }

    impl Keyed for Obj {
        fn id(&self) -> ObjectId {
            self.id
        }
    }

    /// The bookkeeping alone: a prompt "encodes" unless it is longer than 12 bytes.
    struct Mock(ObjectTable<Obj>);

    fn encode(p: &str) -> Result<()> {
        if p.len() > 12 {
            return Err(Error::Text(format!("prompt {p:?} is too long")));
        }
        Ok(())
    }

    impl ObjectSet for Mock {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn max_objects(&self) -> usize {
            self.0.max()
        }
        fn ids(&self) -> Vec<ObjectId> {
            self.0.iter().map(|o| o.id).collect()
        }
        fn check_prompt(&mut self, prompt: &str) -> Result<()> {
            encode(prompt)
        }
        fn set_prompts(&mut self, prompts: &[&str]) -> Result<()> {
            self.0.check_count(prompts.len())?;
            for p in prompts {
                encode(p)?;
            }
            self.0
                .replace_all(prompts.iter().enumerate().map(|(i, p)| Obj {
                    id: i as ObjectId,
                    prompt: p.to_string(),
                }))
        }
        fn clear(&mut self) -> Result<()> {
            self.0.clear();
            Ok(())
        }
        fn add(&mut self, id: Option<ObjectId>, prompt: &str) -> Result<ObjectId> {
            let id = self.0.claim(id)?;
            encode(prompt)?;
            self.0.insert(Obj {
                id,
                prompt: prompt.into(),
            });
            Ok(id)
        }
        fn remove(&mut self, id: ObjectId) -> Result<()> {
            self.0.remove(id).map(|_| ())
        }
        fn replace(&mut self, id: ObjectId, prompt: &str) -> Result<()> {
            self.0.get_mut(id)?;
            encode(prompt)?;
            self.0.get_mut(id)?.prompt = prompt.into();
            Ok(())
        }
        fn resume_ids_at(&mut self, next: ObjectId) {
            self.0.resume_ids_at(next);
        }
    }

    fn run(m: &mut Mock, c: Command) -> Result<Vec<ObjectId>> {
        apply_command(m, &c)
    }

    fn add(prompt: &str, object: Option<ObjectId>) -> Command {
        Command::Add {
            prompt: prompt.into(),
            object,
        }
    }

    fn prompts(m: &Mock) -> Vec<(ObjectId, &str)> {
        m.0.iter().map(|o| (o.id, o.prompt.as_str())).collect()
    }

    #[test]
    fn ids_limits_and_refusals_change_nothing() {
        assert!(ObjectTable::<Obj>::new(0).is_err());
        let mut m = Mock(ObjectTable::new(3).unwrap());
        let p = |s: &str| Command::Prompt { prompt: s.into() };
        assert_eq!(run(&mut m, p("cup; dog")).unwrap(), [0, 1]);
        assert_eq!(prompts(&m), [(0, "cup"), (1, "dog")]);
        // Refused, nothing changes: empty, too many, too long, several with one id, unknown ids.
        for (c, says) in [
            (p(" ; "), "empty"),
            (p("a; b; c; d"), "at most 3"),
            (p("cup; a very long prompt"), "too long"),
            (add("a; b", Some(5)), "names one object"),
            (add("a; b", None), "holds 2 of at most 3"),
            (add("a very long prompt", None), "too long"),
            (add("cat", Some(1)), "object 1 already exists"),
            (
                Command::Remove { object: 4 },
                "no object 4 (objects: [0, 1])",
            ),
            (
                Command::Replace {
                    object: 4,
                    prompt: "x".into(),
                },
                "no object 4",
            ),
            (
                Command::Replace {
                    object: 0,
                    prompt: "x; y".into(),
                },
                "one prompt, got 2",
            ),
        ] {
            let e = run(&mut m, c.clone()).unwrap_err().to_string();
            assert!(e.contains(says), "{c:?}: {e}");
            assert_eq!(prompts(&m), [(0, "cup"), (1, "dog")], "{c:?}");
        }
        // Add takes one past the highest id given out, or the id asked for; a removed id is not
        // the next one given out.
        assert_eq!(run(&mut m, add("cat", None)).unwrap(), [2]);
        let e = run(&mut m, add("owl", None)).unwrap_err().to_string();
        assert!(e.contains("holds 3 of at most 3"), "{e}");
        run(&mut m, Command::Remove { object: 2 }).unwrap();
        assert_eq!(run(&mut m, add("owl", None)).unwrap(), [3]);
        run(&mut m, Command::Remove { object: 0 }).unwrap();
        assert_eq!(run(&mut m, add("bee", Some(9))).unwrap(), [9]);
        assert_eq!(prompts(&m), [(1, "dog"), (3, "owl"), (9, "bee")]);
        run(
            &mut m,
            Command::Replace {
                object: 3,
                prompt: "bat".into(),
            },
        )
        .unwrap();
        assert_eq!(prompts(&m), [(1, "dog"), (3, "bat"), (9, "bee")]);
        // Clear keeps the automatic ids going; a prompt restarts them.
        assert!(run(&mut m, Command::Clear).unwrap().is_empty());
        assert_eq!(run(&mut m, add("cup", None)).unwrap(), [10]);
        assert_eq!(run(&mut m, p("cup")).unwrap(), [0]);
        assert_eq!(run(&mut m, add("dog", None)).unwrap(), [1]);
        // Other commands are not object commands.
        assert!(run(&mut m, Command::Pause).unwrap().is_empty());
        assert_eq!(prompts(&m), [(0, "cup"), (1, "dog")]);
        // The id space wraps around to the first free id.
        let mut t = ObjectTable::<Obj>::new(2).unwrap();
        t.insert(Obj {
            id: ObjectId::MAX,
            prompt: String::new(),
        });
        assert_eq!(t.claim(None).unwrap(), 0);
    }
}
