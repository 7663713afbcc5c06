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

/// Words of [`IdSpace`]'s bitset: one bit per [`ObjectId`].
const ID_WORDS: usize = (ObjectId::MAX as usize + 1) / 64;

/// The ids a table has given out since its ids last restarted (a `prompt` command), and where the
/// search for an assigned id starts. An assigned id is one never given out while any is left, so a
/// consumer that keys its state by id never mistakes a new object for a removed one, even after an
/// id near the top of the space was chosen ([`ObjectTable::claim`]). 8 KiB per table.
#[derive(Clone)]
pub struct IdSpace {
    given: Box<[u64; ID_WORDS]>,
    /// One past the highest id given out (or what [`ObjectTable::resume_ids`] set).
    next: ObjectId,
}

impl std::fmt::Debug for IdSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given: u32 = self.given.iter().map(|w| w.count_ones()).sum();
        f.debug_struct("IdSpace")
            .field("next", &self.next)
            .field("given", &given)
            .finish()
    }
}

impl Default for IdSpace {
    fn default() -> Self {
        IdSpace {
            given: Box::new([0; ID_WORDS]),
            next: 0,
        }
    }
}

impl IdSpace {
    /// True when `id` was given out since the ids last restarted.
    pub fn given(&self, id: ObjectId) -> bool {
        self.given[id as usize / 64] & (1 << (id % 64)) != 0
    }

    /// Where the search for the next assigned id starts.
    pub fn next(&self) -> ObjectId {
        self.next
    }

    fn set_given(&mut self, id: ObjectId) {
        self.given[id as usize / 64] |= 1 << (id % 64);
    }

    fn mark(&mut self, id: ObjectId) {
        self.set_given(id);
        self.next = self.next.max(id.saturating_add(1));
    }

    fn restart(&mut self) {
        self.given.fill(0);
        self.next = 0;
    }

    /// Every id from `start` on, wrapping around once.
    fn from(start: ObjectId) -> impl Iterator<Item = ObjectId> {
        (start..=ObjectId::MAX).chain(0..start)
    }
}

/// `n` ids that are new in every one of `spaces` (each with the ids it holds now), the same for
/// all: ids never given out in any, searched from the highest [`IdSpace::next`] on; once the id
/// space is used up, ids no one holds. How an `add` sent to several streams gives each object
/// the same id everywhere (every table's own search alone could give different ones).
pub fn common_ids(spaces: &[(&IdSpace, &[ObjectId])], n: usize) -> Result<Vec<ObjectId>> {
    let start = spaces.iter().map(|(s, _)| s.next).max().unwrap_or(0);
    let held = |id: ObjectId| spaces.iter().any(|(_, ids)| ids.contains(&id));
    let never = |id: ObjectId| !held(id) && spaces.iter().all(|(s, _)| !s.given(id));
    let mut ids: Vec<ObjectId> = IdSpace::from(start).filter(|&i| never(i)).take(n).collect();
    if ids.len() < n {
        let more: Vec<ObjectId> = IdSpace::from(start)
            .filter(|&i| !held(i) && !ids.contains(&i))
            .take(n - ids.len())
            .collect();
        ids.extend(more);
    }
    if ids.len() < n {
        return Err(Error::Config("no free object id".into()));
    }
    Ok(ids)
}

/// A stream's objects in ascending id order, at most `max` of them.
#[derive(Debug, Clone)]
pub struct ObjectTable<T> {
    items: Vec<T>,
    max: usize,
    /// The ids given out and where the automatic search starts.
    ids: IdSpace,
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
            ids: IdSpace::default(),
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
        let ids: Vec<ObjectId> = self.items.iter().map(Keyed::id).collect();
        unknown_id(id, &ids)
    }

    /// The error for a full table.
    pub fn limit_error(&self) -> Error {
        Error::Config(format!(
            "object limit reached: this stream takes at most {} objects (max_objects); remove one first",
            self.max
        ))
    }

    /// The id a new object gets: `id` if free, else the first id never given out at or after the
    /// automatic start (wrapping around), else, once every id was given out, the first not in use.
    /// Errors, changing nothing: `id` is in use, or the table is full.
    pub fn claim(&self, id: Option<ObjectId>) -> Result<ObjectId> {
        if let Some(i) = id {
            if self.find(i).is_some() {
                return Err(in_use(i));
            }
        }
        if self.items.len() >= self.max {
            return Err(self.limit_error());
        }
        match id {
            Some(i) => Ok(i),
            None => {
                let ids: Vec<ObjectId> = self.items.iter().map(Keyed::id).collect();
                common_ids(&[(&self.ids, &ids)], 1).map(|v| v[0])
            }
        }
    }

    /// Inserts an object whose id came from [`ObjectTable::claim`].
    pub fn insert(&mut self, o: T) {
        let id = o.id();
        let at = self.items.partition_point(|x| x.id() < id);
        self.items.insert(at, o);
        self.ids.mark(id);
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
        // A prompt restarts the ids: 0, 1, … are its objects', the rest are new again.
        self.ids.restart();
        for o in &self.items {
            self.ids.mark(o.id());
        }
        Ok(())
    }

    /// Drops every object (the automatic ids go on from where they were).
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Where the search for the next assigned id starts (one past the highest id given out, or
    /// what [`ObjectTable::resume_ids`] set).
    pub fn next_id(&self) -> ObjectId {
        self.ids.next
    }

    /// The ids given out and where the automatic search starts.
    pub fn id_space(&self) -> &IdSpace {
        &self.ids
    }

    /// Takes `from`'s ids given out and automatic start, so a table rebuilt from another one's
    /// objects assigns the ids that one would (a camera joining late gets the ids the others use).
    pub fn resume_ids(&mut self, from: &IdSpace) {
        self.ids.clone_from(from);
        // Ids held here are given out whatever `from` says (the automatic start stays `from`'s).
        for o in &self.items {
            self.ids.set_given(o.id());
        }
    }

    /// After a frame failed part-way: the objects at positions `in_flight` (whose tracker step
    /// began but whose labels never came) start their tracking afresh with `restart`, as a
    /// `replace` does; `in_flight` is emptied. Left half-advanced, an object's clip would hold one
    /// frame more than it counts and re-scoring it (`finalize`) would fail from then on. The host
    /// and device paths share this.
    pub fn restart_in_flight(
        &mut self,
        in_flight: &mut std::ops::Range<usize>,
        restart: impl Fn(&mut T),
    ) {
        let range = std::mem::replace(in_flight, 0..0);
        for o in self.items.get_mut(range).into_iter().flatten() {
            log::warn!(
                "object {}: the frame failed during its tracking; its tracking restarts",
                o.id()
            );
            restart(o);
        }
    }
}

/// The error for an unknown id, naming the ids there are.
fn unknown_id(id: ObjectId, ids: &[ObjectId]) -> Error {
    let ids: Vec<String> = ids.iter().map(ObjectId::to_string).collect();
    Error::Config(format!("no object {id} (objects: [{}])", ids.join(", ")))
}

/// The error for an id asked for that an object holds.
fn in_use(id: ObjectId) -> Error {
    Error::Config(format!(
        "object {id} already exists; use replace to change its prompt"
    ))
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
    /// The ids given out and where the automatic search starts ([`ObjectTable::id_space`]).
    fn id_space(&self) -> &IdSpace;
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
    /// Takes `from`'s ids given out and automatic start ([`ObjectTable::resume_ids`]).
    fn resume_ids(&mut self, from: &IdSpace);
}

/// Applies an object command (`prompt`, `clear`, `add`, `remove`, `replace`; others change nothing)
/// and returns the ids it added. A refused command changes nothing.
pub fn apply_command<S: ObjectSet + ?Sized>(s: &mut S, command: &Command) -> Result<Vec<ObjectId>> {
    apply_command_with_ids(s, command, None)
}

/// [`apply_command`], where an `add` gives its objects `ids` (one per prompt) instead of its
/// `object` or the automatic ones: how an `add` sent to several streams gives each the same ids
/// ([`common_ids`]).
pub fn apply_command_with_ids<S: ObjectSet + ?Sized>(
    s: &mut S,
    command: &Command,
    ids: Option<&[ObjectId]>,
) -> Result<Vec<ObjectId>> {
    // Every refusal is found before anything changes.
    check_command(s, command, ids)?;
    let mut added = Vec::new();
    match command {
        Command::Prompt { prompt } => {
            let ps: Vec<&str> = split_prompts(prompt).collect();
            s.set_prompts(&ps)?;
            added.extend(s.ids());
        }
        Command::Clear => s.clear()?,
        Command::Add { prompt, object } => {
            for (k, p) in split_prompts(prompt).enumerate() {
                let id = ids.and_then(|v| v.get(k).copied()).or(*object);
                added.push(s.add(id, p)?);
            }
        }
        Command::Remove { object } => s.remove(*object)?,
        Command::Replace { object, prompt } => {
            if let Some(p) = split_prompts(prompt).next() {
                s.replace(*object, p)?;
            }
        }
        _ => {}
    }
    Ok(added)
}

/// Whether `s` would take `command` (with `ids`, as [`apply_command_with_ids`]): the ids, the limit
/// and every prompt's encoding (cached, so applying it then costs no text run). Changes no object;
/// a command sent to several streams is checked on each before any takes it.
pub fn check_command<S: ObjectSet + ?Sized>(
    s: &mut S,
    command: &Command,
    ids: Option<&[ObjectId]>,
) -> Result<()> {
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
            if ps.len() > s.max_objects() {
                return Err(Error::Config(format!(
                    "{} prompts but this stream takes at most {} objects (max_objects)",
                    ps.len(),
                    s.max_objects()
                )));
            }
            for p in ps {
                s.check_prompt(p)?;
            }
        }
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
            let held = s.ids();
            let asked: &[ObjectId] = match (ids, object) {
                (Some(v), _) => v,
                (None, Some(i)) => std::slice::from_ref(i),
                (None, None) => &[],
            };
            if ids.is_some_and(|v| v.len() != ps.len()) {
                return Err(Error::Config(format!(
                    "{} ids for {} prompts",
                    asked.len(),
                    ps.len()
                )));
            }
            for (k, &i) in asked.iter().enumerate() {
                if held.contains(&i) || asked[..k].contains(&i) {
                    return Err(in_use(i));
                }
            }
            // Encoded before anything is added, so a bad prompt adds nothing.
            for p in ps {
                s.check_prompt(p)?;
            }
        }
        Command::Remove { object } => {
            let held = s.ids();
            if !held.contains(object) {
                return Err(unknown_id(*object, &held));
            }
        }
        Command::Replace { object, prompt } => {
            let ps: Vec<&str> = split_prompts(prompt).collect();
            if ps.len() != 1 {
                return Err(Error::Config(format!(
                    "replace takes one prompt, got {} (separated by ';')",
                    ps.len()
                )));
            }
            let held = s.ids();
            if !held.contains(object) {
                return Err(unknown_id(*object, &held));
            }
            s.check_prompt(ps[0])?;
        }
        _ => {}
    }
    Ok(())
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
        fn id_space(&self) -> &IdSpace {
            self.0.id_space()
        }
        fn resume_ids(&mut self, from: &IdSpace) {
            self.0.resume_ids(from);
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

    /// An id chosen at the top of the space does not send the automatic ids back to a removed
    /// object's while ids never given out remain.
    #[test]
    fn a_top_id_does_not_bring_back_removed_ids() {
        let mut m = Mock(ObjectTable::new(4).unwrap());
        let p = |s: &str| Command::Prompt { prompt: s.into() };
        assert_eq!(run(&mut m, p("a; b")).unwrap(), [0, 1]);
        run(&mut m, Command::Remove { object: 0 }).unwrap();
        assert_eq!(run(&mut m, add("c", Some(ObjectId::MAX))).unwrap(), [65535]);
        let d = run(&mut m, add("d", None)).unwrap();
        assert_ne!(d, [0], "the removed object's id came back");
        assert_eq!(d, [2]);
        // A stream rebuilt from this one (a camera joining late) assigns the same next id.
        let mut joined = Mock(ObjectTable::new(4).unwrap());
        for (id, prompt) in prompts(&m) {
            joined.add(Some(id), prompt).unwrap();
        }
        joined.resume_ids(m.id_space());
        run(&mut m, Command::Remove { object: 2 }).unwrap();
        run(&mut joined, Command::Remove { object: 2 }).unwrap();
        let a = run(&mut m, add("e", None)).unwrap();
        assert_eq!(a, run(&mut joined, add("e", None)).unwrap());
        assert!(a[0] > 2, "{a:?}");
    }

    /// Ids new in every table: past the highest next id of all, never given out in any.
    #[test]
    fn common_ids_are_new_everywhere() {
        let mut a = ObjectTable::<Obj>::new(4).unwrap();
        let mut b = ObjectTable::<Obj>::new(4).unwrap();
        let obj = |id| Obj {
            id,
            prompt: String::new(),
        };
        a.insert(obj(0));
        b.insert(obj(0));
        b.insert(obj(1));
        b.insert(obj(2));
        let ids = |t: &ObjectTable<Obj>| t.iter().map(|o| o.id).collect::<Vec<_>>();
        let (ia, ib) = (ids(&a), ids(&b));
        let got = common_ids(&[(a.id_space(), &ia), (b.id_space(), &ib)], 2).unwrap();
        assert_eq!(got, [3, 4]);
        // Given out at the top in one table: the search wraps past what either gave out.
        a.insert(obj(ObjectId::MAX));
        let ia = ids(&a);
        let got = common_ids(&[(a.id_space(), &ia), (b.id_space(), &ib)], 1).unwrap();
        assert_eq!(got, [3]);
    }
}
